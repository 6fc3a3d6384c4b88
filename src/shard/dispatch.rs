//! Hands each request that reaches a core (over the mesh, or from this core itself) to
//! the room that owns its answer.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use super::protocol::{ApiRequest, Reply, Request};
use super::{accounts, projections, Shard};

/// `from`: the core that asked (this one for its own requests); a command it causes sends
/// that core its results without waiting for them to be applied there, since they reach
/// it ahead of the answer.
pub fn handle(shard: Rc<Shard>, from: usize, req: Request) -> Pin<Box<dyn Future<Output = Reply>>> {
    Box::pin(async move {
        match req {
            Request::Api(api) => Reply::Api(answer(&shard, from, api).await),
            Request::Reserve { key, order, symbol } => Reply::Reserved(shard.accounts.reserve(key.as_deref(), order, symbol)),
            Request::Release { order } => {
                shard.accounts.release(&order);
                Reply::Done
            }
            Request::Hold { user, id } => {
                shard.accounts.hold(user, id);
                Reply::Done
            }
            Request::Apply { symbol, offset, logged, replayed, events, snapshot } => {
                shard.accounts.apply(symbol, offset, logged, replayed, &events);
                if snapshot {
                    accounts::snapshot_accounts_soon(&shard.accounts);
                }
                Reply::Done
            }
            Request::Amend { symbol, user, id, price, quantity } => Reply::Amended(shard.symbols.amend(from, symbol, user, id, price, quantity).await),
            Request::ReserveAmend { user, id, added } => Reply::AmendReserved(shard.accounts.reserve_amend(user, id, added)),
            Request::SettleAmend { user, id, added } => {
                shard.accounts.settle_amend(user, id, added);
                Reply::Done
            }
            Request::Cancel { symbol, user, id } => Reply::Cancelled(shard.symbols.cancel(from, symbol, user, Some(id)).await),
            Request::CancelAll { symbol, user } => Reply::Cancelled(shard.symbols.cancel(from, symbol, user, None).await),
            Request::Check => Reply::Checked(projections::hot::check(&shard.out).await),
            Request::Prices => Reply::Prices(shard.symbols.prices()),
            Request::Summary => Reply::Summary(shard.accounts.totals()),
        }
    })
}

/// An API request, to the room that answers it: the order path and market data to the
/// symbol's, everything about an account to the account's.
async fn answer(shard: &Shard, from: usize, req: ApiRequest) -> Result<super::protocol::Answer, super::protocol::Refusal> {
    match req {
        ApiRequest::Symbol(req) => shard.symbols.answer(from, req).await,
        ApiRequest::Account(req) => shard.accounts.answer(req).await,
    }
}
