//! A virtual host: its exchanges and queues, the topology operations on them, and routing.
//!
//! Registries are `DashMap`s: publishes look exchanges and queues up without a global lock.
//! Topology changes (declare, delete, bind) take `topology` so that check-then-act sequences
//! (exclusive ownership, if-unused, auto-delete) are atomic; they never run on the publish path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::hash::DashMap;
use amqp_codec::{FieldTable, RawProperties};

use warren_storage::{MetaKind, WriteOp};

mod equivalence;
mod lookup_cache;

pub use lookup_cache::LookupCache;

use equivalence::{check_exchange_equivalence, check_queue_equivalence};

use crate::durable::Durability;
use crate::durable::records::{
    BindingRecord, BindingTarget, ExchangeRecord, QueueRecord, name_key,
};
use crate::error::{ProtocolError, ProtocolResult};
use crate::exchange::{Destination, Exchange, ExchangeKind, ExchangeSettings};
use crate::memory::MemoryMonitor;
use crate::names::{ExchangeName, QueueName, generated_suffix};
use crate::queue::{ConnectionId, Queue, QueueCounts, QueueDefaults, QueueSettings, QueueStore};

pub struct VHost {
    pub name: Arc<str>,
    exchanges: DashMap<ExchangeName, Arc<Exchange>>,
    queues: DashMap<QueueName, Arc<Queue>>,
    memory: Arc<MemoryMonitor>,
    /// Where durable topology and messages go; `None` only in unit tests.
    durability: Option<Arc<Durability>>,
    queue_defaults: QueueDefaults,
    topology: Mutex<()>,
    /// Exchanges and queues removed so far: channels' lookup caches are valid while it stays.
    removals: AtomicU64,
}

/// Scratch space for routing one message, owned by the channel so routing allocates nothing.
#[derive(Debug, Default)]
pub struct RouteScratch {
    destinations: Vec<Destination>,
    visited: Vec<usize>,
    /// The last queue the default exchange routed to.
    default_route: LookupCache<Queue>,
}

impl VHost {
    pub fn new(
        name: &str,
        memory: Arc<MemoryMonitor>,
        durability: Option<Arc<Durability>>,
        queue_defaults: QueueDefaults,
    ) -> Self {
        let vhost = Self {
            name: Arc::from(name),
            exchanges: DashMap::default(),
            queues: DashMap::default(),
            memory,
            durability,
            queue_defaults,
            topology: Mutex::new(()),
            removals: AtomicU64::new(0),
        };
        for (name, kind) in [
            ("", ExchangeKind::Direct),
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ] {
            let settings = ExchangeSettings {
                kind,
                durable: true,
                auto_delete: false,
                internal: false,
                arguments: FieldTable::default(),
            };
            let name = ExchangeName::new(name);
            vhost
                .exchanges
                .insert(name.clone(), Arc::new(Exchange::new(name, settings)));
        }
        vhost
    }

    fn lock_topology(&self) -> MutexGuard<'_, ()> {
        match self.topology.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges.get(name).map(|e| Arc::clone(e.value()))
    }

    pub fn queue_defaults(&self) -> &QueueDefaults {
        &self.queue_defaults
    }

    pub fn memory(&self) -> &MemoryMonitor {
        &self.memory
    }

    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.get(name).map(|q| Arc::clone(q.value()))
    }

    fn removals(&self) -> u64 {
        self.removals.load(Ordering::Acquire)
    }

    fn count_removal(&self) {
        self.removals.fetch_add(1, Ordering::AcqRel);
    }

    /// The exchange a publish names, or 404 as RabbitMQ words it; `cache` remembers it.
    pub fn publish_exchange(
        &self,
        name: &[u8],
        cache: &mut LookupCache<Exchange>,
    ) -> ProtocolResult<Arc<Exchange>> {
        let removals = self.removals();
        if let Some(exchange) = cache.get(name, removals) {
            return Ok(Arc::clone(exchange));
        }
        let exchange = self.existing_exchange(&String::from_utf8_lossy(name))?;
        cache.remember(name, &exchange, removals);
        Ok(exchange)
    }

    /// The queue the default exchange routes `routing_key` to; `cache` remembers it.
    fn default_route(
        &self,
        routing_key: &[u8],
        cache: &mut LookupCache<Queue>,
    ) -> Option<Arc<Queue>> {
        let removals = self.removals();
        if let Some(queue) = cache.get(routing_key, removals) {
            return Some(Arc::clone(queue));
        }
        let queue = self.queue(std::str::from_utf8(routing_key).ok()?)?;
        cache.remember(routing_key, &queue, removals);
        Some(queue)
    }

    /// The exchange, or 404 as RabbitMQ words it.
    pub fn existing_exchange(&self, name: &str) -> ProtocolResult<Arc<Exchange>> {
        self.exchange(name).ok_or_else(|| {
            ProtocolError::not_found(format!("no exchange '{name}' in vhost '{}'", self.name))
        })
    }

    /// The queue, or 404; 405 if it is another connection's exclusive queue.
    pub fn existing_queue(&self, name: &str, conn: ConnectionId) -> ProtocolResult<Arc<Queue>> {
        let queue = self.queue(name).ok_or_else(|| {
            ProtocolError::not_found(format!("no queue '{name}' in vhost '{}'", self.name))
        })?;
        queue.check_access(conn)?;
        Ok(queue)
    }

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.iter().map(|q| Arc::clone(q.value())).collect()
    }

    pub fn declare_exchange(
        &self,
        name: &str,
        settings: ExchangeSettings,
        passive: bool,
    ) -> ProtocolResult<Arc<Exchange>> {
        let _topology = self.lock_topology();
        if passive {
            return self.existing_exchange(name);
        }
        if let Some(existing) = self.exchange(name) {
            check_exchange_equivalence(&existing, &settings, &self.name)?;
            return Ok(existing);
        }
        if name.starts_with("amq.") {
            return Err(ProtocolError::access_refused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        if settings.durable
            && let Some(d) = &self.durability
        {
            let record = ExchangeRecord {
                vhost: self.name.to_string(),
                name: name.to_string(),
                settings: settings.clone(),
            };
            d.put(MetaKind::Exchange, &record.key(), &record.value());
        }
        let name = ExchangeName::new(name);
        let exchange = Arc::new(Exchange::new(name.clone(), settings));
        self.exchanges.insert(name, Arc::clone(&exchange));
        Ok(exchange)
    }

    /// Puts back a durable exchange found in the store at start.
    pub fn restore_exchange(&self, record: ExchangeRecord) {
        let name = ExchangeName::new(&record.name);
        self.exchanges
            .insert(name.clone(), Arc::new(Exchange::new(name, record.settings)));
    }

    /// Puts back a durable queue rebuilt from the store at start.
    pub fn restore_queue(&self, queue: Arc<Queue>) {
        self.queues.insert(queue.name.clone(), queue);
    }

    /// Puts back a durable binding found in the store at start; false if an end is missing.
    pub fn restore_binding(&self, record: &BindingRecord) -> bool {
        let Some(source) = self.exchange(&record.source) else {
            return false;
        };
        let destination = match &record.target {
            BindingTarget::Queue(q) => self.queue(q).map(Destination::Queue),
            BindingTarget::Exchange(e) => self.exchange(e).map(Destination::Exchange),
        };
        let Some(destination) = destination else {
            return false;
        };
        source
            .table_mut()
            .bind(destination, &record.routing_key, &record.arguments);
        true
    }

    /// The stored record of a binding, if both its ends are durable.
    fn binding_record(
        &self,
        source: &Exchange,
        destination: &Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Option<BindingRecord> {
        if !source.settings.durable || source.is_default() {
            return None;
        }
        let target = match destination {
            Destination::Queue(q) if q.is_durable() => BindingTarget::Queue(q.name.to_string()),
            Destination::Exchange(e) if e.settings.durable => {
                BindingTarget::Exchange(e.name.to_string())
            }
            _ => return None,
        };
        Some(BindingRecord {
            vhost: self.name.to_string(),
            source: source.name.to_string(),
            target,
            routing_key: routing_key.to_string(),
            arguments: arguments.clone(),
        })
    }

    fn forget_binding(&self, record: Option<BindingRecord>) {
        if let (Some(record), Some(d)) = (record, &self.durability) {
            d.delete(MetaKind::Binding, &record.key());
        }
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> ProtocolResult {
        let _topology = self.lock_topology();
        if name.is_empty() || name.starts_with("amq.") {
            return Err(ProtocolError::access_refused(format!(
                "operation not permitted on exchange '{name}'"
            )));
        }
        let Some(exchange) = self.exchange(name) else {
            // Deleting what is not there succeeds, as in RabbitMQ.
            return Ok(());
        };
        if if_unused && !exchange.table().is_empty() {
            return Err(ProtocolError::precondition_failed(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        self.remove_exchange(&exchange);
        Ok(())
    }

    fn remove_exchange(&self, exchange: &Arc<Exchange>) {
        self.exchanges.remove(exchange.name.as_str());
        self.count_removal();
        let destination = Destination::Exchange(Arc::clone(exchange));
        self.remove_destination_everywhere(&destination);
        let old = std::mem::replace(
            &mut *exchange.table_mut(),
            crate::exchange::RoutingTable::new(exchange.kind()),
        );
        if exchange.settings.durable
            && let Some(d) = &self.durability
        {
            for (dest, key, args) in old.bindings() {
                self.forget_binding(self.binding_record(exchange, dest, key, args));
            }
            d.delete(MetaKind::Exchange, &name_key(&self.name, &exchange.name));
        }
    }

    /// Drops every binding to `destination`, then auto-deletes exchanges left without
    /// bindings.
    fn remove_destination_everywhere(&self, destination: &Destination) {
        let mut emptied = Vec::new();
        let mut forgotten = Vec::new();
        for entry in self.exchanges.iter() {
            let exchange = entry.value();
            let mut table = exchange.table_mut();
            if self.durability.is_some() {
                forgotten.extend(
                    table
                        .bindings()
                        .filter(|(d, _, _)| *d == destination)
                        .filter_map(|(d, k, a)| self.binding_record(exchange, d, k, a)),
                );
            }
            if table.remove_destination(destination) > 0
                && table.is_empty()
                && exchange.settings.auto_delete
            {
                emptied.push(Arc::clone(exchange));
            }
        }
        for record in forgotten {
            self.forget_binding(Some(record));
        }
        for exchange in emptied {
            self.remove_exchange(&exchange);
        }
    }

    /// `queue.declare`. An empty name asks for a server-named `amq.gen-…` queue.
    pub fn declare_queue(
        &self,
        name: &str,
        settings: QueueSettings,
        passive: bool,
        conn: ConnectionId,
    ) -> ProtocolResult<(Arc<Queue>, QueueCounts)> {
        let _topology = self.lock_topology();
        if passive {
            let queue = self.existing_queue(name, conn)?;
            queue.touch();
            let counts = queue.counts();
            return Ok((queue, counts));
        }
        if let Some(existing) = self.queue(name) {
            existing.check_access(conn)?;
            check_queue_equivalence(&existing, &settings)?;
            existing.touch();
            let counts = existing.counts();
            return Ok((existing, counts));
        }
        if name.starts_with("amq.") {
            return Err(ProtocolError::access_refused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let name = if name.is_empty() {
            QueueName::new(&format!("amq.gen-{}", generated_suffix()))
        } else {
            QueueName::new(name)
        };
        // Every queue gets an id in the store, to page bodies out under memory pressure;
        // only durable ones get a record, so only they come back after a restart.
        // Exclusive queues never outlive their connection, so they are never recorded.
        let store = self.durability.as_ref().map(|d| {
            let id = d.next_queue_id();
            if settings.durable && settings.exclusive_owner.is_none() {
                let record = QueueRecord {
                    vhost: self.name.to_string(),
                    name: name.to_string(),
                    id,
                    auto_delete: settings.auto_delete,
                    arguments: settings.arguments.clone(),
                };
                d.put(MetaKind::Queue, &record.key(), &record.value());
            }
            QueueStore {
                store: d.store.clone(),
                id,
            }
        });
        let queue = Arc::new(Queue::new(
            name.clone(),
            Arc::clone(&self.name),
            settings,
            Arc::clone(&self.memory),
            store,
        ));
        self.queues.insert(name, Arc::clone(&queue));
        Ok((queue, QueueCounts::default()))
    }

    /// `queue.delete`; returns the number of messages deleted with it.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: ConnectionId,
    ) -> ProtocolResult<u32> {
        let _topology = self.lock_topology();
        let Some(queue) = self.queue(name) else {
            return Ok(0);
        };
        queue.check_access(conn)?;
        let counts = queue.counts();
        if if_unused && counts.consumers > 0 {
            return Err(ProtocolError::precondition_failed(format!(
                "queue '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if if_empty && counts.ready > 0 {
            return Err(ProtocolError::precondition_failed(format!(
                "queue '{name}' in vhost '{}' is not empty",
                self.name
            )));
        }
        Ok(self.remove_queue(&queue))
    }

    /// Deletes a queue that an auto-delete or exclusive rule says must go.
    pub fn remove_queue_if_present(&self, queue: &Arc<Queue>) {
        let _topology = self.lock_topology();
        self.remove_queue(queue);
    }

    fn remove_queue(&self, queue: &Arc<Queue>) -> u32 {
        let removed = self
            .queues
            .remove_if(queue.name.as_str(), |_, q| Arc::ptr_eq(q, queue))
            .is_some();
        if !removed {
            return 0;
        }
        self.count_removal();
        self.remove_destination_everywhere(&Destination::Queue(Arc::clone(queue)));
        let count = queue.delete();
        if let (Some(store), Some(d)) = (&queue.store, &self.durability) {
            // Late writes for this queue id are ignored by the store from here on.
            store
                .store
                .submit(vec![WriteOp::DropQueue { queue: store.id }], None);
            if queue.is_durable() {
                d.delete(MetaKind::Queue, &name_key(&self.name, &queue.name));
            }
        }
        count
    }

    pub fn bind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> ProtocolResult {
        let _topology = self.lock_topology();
        let exchange = self.bindable_source(source)?;
        exchange
            .kind()
            .validate_binding(arguments)
            .map_err(|e| ProtocolError::precondition_failed(e.0))?;
        let record = self.binding_record(&exchange, &destination, routing_key, arguments);
        let added = exchange
            .table_mut()
            .bind(destination, routing_key, arguments);
        if added && let (Some(record), Some(d)) = (record, &self.durability) {
            d.put(MetaKind::Binding, &record.key(), &[]);
        }
        Ok(())
    }

    pub fn unbind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> ProtocolResult {
        let _topology = self.lock_topology();
        let exchange = self.bindable_source(source)?;
        let record = self.binding_record(&exchange, &destination, routing_key, arguments);
        let (removed, now_empty) = {
            let mut table = exchange.table_mut();
            let removed = table.unbind(&destination, routing_key, arguments);
            (removed, removed && table.is_empty())
        };
        if removed {
            self.forget_binding(record);
        }
        if now_empty && exchange.settings.auto_delete {
            self.remove_exchange(&exchange);
        }
        Ok(())
    }

    fn bindable_source(&self, source: &str) -> ProtocolResult<Arc<Exchange>> {
        if source.is_empty() {
            return Err(ProtocolError::access_refused(format!(
                "operation not permitted on the default exchange in vhost '{}'",
                self.name
            )));
        }
        self.existing_exchange(source)
    }

    /// The queues a message published to `exchange` reaches: bindings, exchange-to-exchange
    /// bindings (each exchange visited once), then the alternate exchange if nothing matched.
    pub fn route(
        &self,
        exchange: &Arc<Exchange>,
        routing_key: &[u8],
        properties: &RawProperties,
        scratch: &mut RouteScratch,
        out: &mut Vec<Arc<Queue>>,
    ) {
        scratch.visited.clear();
        let mut headers = None;
        let mut current = Arc::clone(exchange);
        loop {
            scratch.visited.push(Arc::as_ptr(&current) as usize);
            self.route_into(
                &current,
                routing_key,
                properties,
                &mut headers,
                scratch,
                out,
            );
            if !out.is_empty() {
                return;
            }
            let Some(alternate) = current.alternate.as_ref().and_then(|n| self.exchange(n)) else {
                return;
            };
            if scratch
                .visited
                .contains(&(Arc::as_ptr(&alternate) as usize))
            {
                return;
            }
            current = alternate;
        }
    }

    fn route_into(
        &self,
        exchange: &Arc<Exchange>,
        routing_key: &[u8],
        properties: &RawProperties,
        headers: &mut Option<Option<FieldTable>>,
        scratch: &mut RouteScratch,
        out: &mut Vec<Arc<Queue>>,
    ) {
        if exchange.is_default() {
            if let Some(queue) = self.default_route(routing_key, &mut scratch.default_route)
                && !out.iter().any(|q| Arc::ptr_eq(q, &queue))
            {
                out.push(queue);
            }
            return;
        }
        let start = scratch.destinations.len();
        {
            let table = exchange.table();
            let hdrs = if exchange.kind() == ExchangeKind::Headers {
                headers.get_or_insert_with(|| properties.headers()).as_ref()
            } else {
                None
            };
            table.route(routing_key, hdrs, &mut scratch.destinations);
        }
        let end = scratch.destinations.len();
        for i in start..end {
            match scratch.destinations[i].clone() {
                Destination::Queue(queue) => {
                    if !out.iter().any(|q| Arc::ptr_eq(q, &queue)) {
                        out.push(queue);
                    }
                }
                Destination::Exchange(next) => {
                    let id = Arc::as_ptr(&next) as usize;
                    if !scratch.visited.contains(&id) {
                        scratch.visited.push(id);
                        self.route_into(&next, routing_key, properties, headers, scratch, out);
                    }
                }
            }
        }
        scratch.destinations.truncate(start);
    }
}
