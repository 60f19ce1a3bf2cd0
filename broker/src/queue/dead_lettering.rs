//! Sending dead letters on: a message rejected, expired, dropped by a length limit or past
//! its delivery limit leaves its queue and is republished to the queue's
//! `x-dead-letter-exchange` with its `x-death` history (see [`super::dead_letter`]), or
//! dropped when there is none. Like RabbitMQ's `rabbit_dead_letter`.

use std::sync::Arc;

use bytes::Bytes;
use warren_storage::WriteOp;

use super::dead_letter::{Death, dead_letter_properties, death_routing_keys, is_cycle};
use super::{DeadLetter, Queue};
use crate::durable::StoreBatch;
use crate::enqueue::enqueue_routed;
use crate::message::{Message, now_ms};
use crate::vhost::{RouteScratch, VHost};

/// Removes `letters` from `source` for good and republishes them to its dead-letter
/// exchange. Their store writes go into `batch`.
pub fn dead_letter(
    vhost: &VHost,
    source: &Queue,
    letters: Vec<DeadLetter>,
    batch: &mut StoreBatch,
    scratch: &mut RouteScratch,
) {
    if letters.is_empty() {
        return;
    }
    let args = &source.settings.policy.arguments;
    let exchange = args
        .dead_letter_exchange
        .as_deref()
        .and_then(|name| vhost.exchange(name));
    let mut targets: Vec<Arc<Queue>> = Vec::new();
    let time_secs = now_ms() / 1000;
    for letter in letters {
        if let (Some(index), Some(qs)) = (letter.entry.index_entry(), &source.store) {
            batch.push(WriteOp::Remove {
                queue: qs.id,
                seq: index.seq,
                message_id: index.message_id,
            });
        }
        let Some(exchange) = &exchange else {
            tracing::debug!(queue = %source.name, reason = ?letter.reason, "dropping dead letter: no dead-letter exchange");
            continue;
        };
        let message = &letter.entry.message;
        let routing_key = args
            .dead_letter_routing_key
            .as_deref()
            .map(|k| Bytes::copy_from_slice(k.as_bytes()))
            .unwrap_or_else(|| message.routing_key.clone());
        // The recorded routing keys include CC keys, as RabbitMQ records them.
        let death_keys = death_routing_keys(&message.routing_key, &message.properties);
        let death_keys: Vec<&[u8]> = death_keys.iter().map(Vec::as_slice).collect();
        let properties = dead_letter_properties(
            &message.properties,
            &Death {
                queue: &source.name,
                reason: letter.reason,
                exchange: &message.exchange,
                routing_keys: &death_keys,
                time_secs,
            },
        );
        vhost.route(exchange, &routing_key, &properties, scratch, &mut targets);
        // A message that went round a loop of queues with no client rejecting it on the way
        // would circle forever: RabbitMQ drops it at the queue that closes the loop.
        targets.retain(|q| !is_cycle(&properties, &q.name));
        if targets.is_empty() {
            continue;
        }
        let republished = Message::new(
            Bytes::copy_from_slice(exchange.name.as_bytes()),
            routing_key,
            properties,
            message.body.clone(),
            None,
        );
        let paging = vhost.memory().should_page();
        // Dead letters refused by a full target queue are dropped, as in RabbitMQ.
        let _ = enqueue_routed(republished, &mut targets, batch, paging);
    }
}
