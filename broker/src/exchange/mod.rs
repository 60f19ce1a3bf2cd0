//! Exchanges: pure routing from (routing key, headers) to queues and other exchanges.
//!
//! The routing tables themselves (direct map, topic trie, headers matching) live in
//! [`routing`]; this file owns what an exchange is (type, flags, arguments) and the
//! destinations it routes to.

mod headers;
pub mod routing;
mod topic;

use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use amqp_codec::{AMQPValue, FieldTable};

pub use routing::{ExchangeKind, RoutingTable};

use crate::names::ExchangeName;
use crate::queue::Queue;

/// Where a binding leads. Compared by identity: a deleted and re-declared queue of the same
/// name is a different destination.
#[derive(Debug, Clone)]
pub enum Destination {
    Queue(Arc<Queue>),
    Exchange(Arc<Exchange>),
}

impl PartialEq for Destination {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Destination::Queue(a), Destination::Queue(b)) => Arc::ptr_eq(a, b),
            (Destination::Exchange(a), Destination::Exchange(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Destination {}

impl Hash for Destination {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Destination::Queue(q) => (0u8, Arc::as_ptr(q) as usize).hash(state),
            Destination::Exchange(e) => (1u8, Arc::as_ptr(e) as usize).hash(state),
        }
    }
}

/// What `exchange.declare` asked for; compared on re-declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeSettings {
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

#[derive(Debug)]
pub struct Exchange {
    pub name: ExchangeName,
    pub settings: ExchangeSettings,
    /// `alternate-exchange`: where messages this exchange cannot route go.
    pub alternate: Option<ExchangeName>,
    table: RwLock<RoutingTable<Destination>>,
}

impl Exchange {
    pub fn new(name: ExchangeName, settings: ExchangeSettings) -> Self {
        let alternate = match settings.arguments.inner().get("alternate-exchange") {
            Some(AMQPValue::LongString(s)) => {
                Some(ExchangeName::new(&String::from_utf8_lossy(s.as_bytes())))
            }
            Some(AMQPValue::ShortString(s)) => Some(ExchangeName::new(s.as_str())),
            _ => None,
        };
        Self {
            name,
            table: RwLock::new(RoutingTable::new(settings.kind)),
            settings,
            alternate,
        }
    }

    pub fn kind(&self) -> ExchangeKind {
        self.settings.kind
    }

    pub fn is_default(&self) -> bool {
        self.name.is_empty()
    }

    /// Read access for routing. Writers (bind, unbind, delete) are rare and quick.
    pub fn table(&self) -> RwLockReadGuard<'_, RoutingTable<Destination>> {
        match self.table.read() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn table_mut(&self) -> RwLockWriteGuard<'_, RoutingTable<Destination>> {
        match self.table.write() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}
