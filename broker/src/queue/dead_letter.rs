//! Placeholder until the dead-letter header module lands (replaced on merge).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    Maxlen,
    DeliveryLimit,
}

pub struct Death<'a> {
    pub queue: &'a str,
    pub reason: DeathReason,
    pub exchange: &'a [u8],
    pub routing_keys: &'a [&'a [u8]],
    pub time_secs: u64,
}

pub fn dead_letter_properties(
    original: &amqp_codec::RawProperties,
    _death: &Death,
) -> amqp_codec::RawProperties {
    original.clone()
}

pub fn is_cycle(_properties: &amqp_codec::RawProperties, _target_queue: &str) -> bool {
    false
}

pub fn with_delivery_count(
    original: &amqp_codec::RawProperties,
    _count: u32,
) -> amqp_codec::RawProperties {
    original.clone()
}
