//! The cross-client matrix with amqprs: publish the canonical message once per consumer, and
//! read what each publisher left for amqprs.

use std::sync::Arc;
use std::time::Duration;

use amqprs::FieldTable;
use client_drivers::{Ctx, Step, fail};

use crate::client::*;
use crate::scenarios::compared;
use crate::values;

pub async fn publish_to(ctx: Arc<Ctx>, consumers: Vec<String>) -> Step<String> {
    let conn = open_connection(&ctx.url).await?;
    let (ch, mut events) = confirm_channel(&conn).await?;
    let canon = &ctx.spec.canonical;
    for consumer in &consumers {
        let q = ctx.spec.cross_queue(crate::CLIENT, consumer);
        declare(&ch, &q, FieldTable::new()).await?;
        let props = values::canonical_properties(canon)?;
        publish(&ch, "", &q, canon.body.as_bytes(), props).await?;
        events.confirms.published();
    }
    events.confirms.all_acked(Duration::from_secs(10)).await?;
    finish(conn).await;
    Ok(format!("published to {} queues", consumers.len()))
}

pub async fn consume_from(ctx: Arc<Ctx>, publisher: String) -> Step<String> {
    let conn = open_connection(&ctx.url).await?;
    let (ch, _events) = channel(&conn).await?;
    let q = ctx.spec.cross_queue(&publisher, crate::CLIENT);
    let Some(m) = get_eventually(&ch, &q, Duration::from_secs(5)).await? else {
        fail!("nothing in {q}");
    };
    ack(&ch, m.tag()).await?;
    delete_queues(&ch, &[&q]).await;
    finish(conn).await;
    compared(&ctx.spec.canonical, &m.body, &m.properties)?;
    Ok("unchanged".into())
}
