//! The cross-client matrix with lapin: publish the canonical message once per consumer, and
//! read what each publisher left for lapin.

use std::sync::Arc;
use std::time::Duration;

use client_drivers::{Ctx, Step, fail};
use lapin::options::BasicAckOptions;
use lapin::types::FieldTable;

use crate::client::*;
use crate::scenarios::compared;
use crate::values;

pub async fn publish_to(ctx: Arc<Ctx>, consumers: Vec<String>) -> Step<String> {
    let conn = open_connection(&ctx.url).await?;
    let ch = confirm_channel(&conn).await?;
    let canon = &ctx.spec.canonical;
    for consumer in &consumers {
        let q = ctx.spec.cross_queue(crate::CLIENT, consumer);
        declare(&ch, &q, FieldTable::default()).await?;
        let props = values::canonical_properties(canon)?;
        publish_acked(&ch, "", &q, canon.body.as_bytes(), props).await?;
    }
    finish(conn).await;
    Ok(format!("published to {} queues", consumers.len()))
}

pub async fn consume_from(ctx: Arc<Ctx>, publisher: String) -> Step<String> {
    let conn = open_connection(&ctx.url).await?;
    let ch = channel(&conn).await?;
    let q = ctx.spec.cross_queue(&publisher, crate::CLIENT);
    let Some(m) = get_eventually(&ch, &q, Duration::from_secs(5)).await? else {
        fail!("nothing in {q}");
    };
    m.delivery.acker.ack(BasicAckOptions::default()).await?;
    delete_queues(&ch, &[&q]).await;
    finish(conn).await;
    compared(&ctx.spec.canonical, &m.delivery)?;
    Ok("unchanged".into())
}
