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
    Box::pin(run(shard, from, req))
}

/// [`handle`]'s work, unboxed, for a caller that keeps the future itself.
pub async fn run(shard: Rc<Shard>, from: usize, req: Request) -> Reply {
    if let Some(reply) = answer_now(&shard, &req) {
        return reply;
    }
    match req {
        Request::Api(api) => Reply::Api(answer(&shard, from, api).await),
        Request::Amend { symbol, user, id, price, quantity } => Reply::Amended(shard.symbols.amend(from, symbol, user, id, price, quantity).await),
        Request::ReserveAmend { user, id, added } => Reply::AmendReserved(shard.accounts.reserve_amend(user, id, added)),
        Request::SettleAmend { user, id, added } => {
            shard.accounts.settle_amend(user, id, added);
            Reply::Done
        }
        Request::Cancel { symbol, user, id } => Reply::Cancelled(shard.symbols.cancel(from, symbol, user, Some(id)).await),
        Request::CancelAll { symbol, user } => Reply::Cancelled(shard.symbols.cancel(from, symbol, user, None).await),
        Request::Check => Reply::Checked(projections::hot::check(&shard.out).await),
        Request::Summary => Reply::Summary(shard.accounts.totals()),
        Request::Reserve { .. } | Request::Release { .. } | Request::Hold { .. } | Request::Apply { .. } | Request::Prices => {
            unreachable!("answered at once above")
        }
    }
}

/// The requests answered at once, in one step that never waits: results applied and the
/// risk steps. A receiver handles these in arrival order, as they come, so that results
/// apply in log order and a reservation sees every result sent before it. `None` for
/// any other request.
pub fn answer_now(shard: &Shard, req: &Request) -> Option<Reply> {
    Some(match req {
        Request::Reserve { key, order, symbol } => Reply::Reserved(shard.accounts.reserve(key.as_deref(), *order, *symbol)),
        Request::Release { order } => {
            shard.accounts.release(order);
            Reply::Done
        }
        Request::Hold { user, id } => {
            shard.accounts.hold(*user, *id);
            Reply::Done
        }
        Request::Apply { symbol, offset, logged, replayed, events, snapshot } => {
            shard.accounts.apply(*symbol, *offset, *logged, *replayed, events);
            if *snapshot {
                accounts::snapshot_accounts_soon(&shard.accounts);
            }
            Reply::Done
        }
        Request::Prices => Reply::Prices(shard.symbols.prices()),
        _ => return None,
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
