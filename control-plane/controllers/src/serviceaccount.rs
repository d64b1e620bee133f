//! Placeholder until this controller lands.
use crate::Context;

pub async fn run(ctx: Context) -> Result<(), crate::Error> {
    ctx.shutdown.cancelled().await;
    Ok(())
}
