//! Answering an HTTP request on the core that accepted it: read the body within its
//! deadline, parse and route it ([`super::parse`]), ask the shard that owns the answer,
//! and render what it says ([`super::render`], [`super::error`]). Order history is read
//! from cold storage here, once the account's owner has said whose key it is.

use std::cell::RefCell;
use std::convert::Infallible;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use exchange_io::http::Activity;
use hyper::{Request as HttpRequest, Response};

use super::error::{invalid, ApiError};
use super::parse::{self, Input, Limits, Routed};
use super::{render, HttpReply};
use crate::cold::reader::{ColdReader, HistoryQuery};
use crate::health::{cold, hot};
use crate::shard::protocol::{Answer, ApiRequest, MarketPrices, Reply, Request, SymbolRequest};
use crate::shard::Shard;

/// The HTTP side of one core.
pub struct Service {
    pub shard: Rc<Shard>,
    /// Cold storage's reader (order history), when configured.
    pub history: Option<ColdReader>,
    /// This core's stream connections (`GET /v1/stream`).
    pub hub: Option<Rc<super::stream::Hub>>,
    /// Who may hold a connection slot (process-wide).
    pub admission: std::sync::Arc<super::admission::Admission>,
    /// The Binance dialect's listen keys (process-wide).
    pub listen_keys: std::sync::Arc<super::binance::stream::ListenKeys>,
}

/// Headers allowed on a request, and their total size (names and values). Past them the
/// request is answered 431 and the connection closed. hyper itself answers a bare 431 past
/// 100 headers or a 16 KiB head (its read buffer), before the request reaches us.
pub const MAX_HEADERS: usize = 64;
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// One connection as its requests see it: where it comes from, and the stream upgrade
/// a request was answered with (101), which the server carries out once hyper hands the
/// socket back.
pub struct Connection {
    pub peer: std::net::IpAddr,
    pub upgrade: RefCell<Option<super::stream::Upgrade>>,
}

/// hyper's service for one connection; `activity` is told when a request's headers are
/// in and when it is answered (the connection watchdog's view of the request).
pub fn hyper_service(
    service: Rc<Service>,
    activity: Rc<Activity>,
    connection: Rc<Connection>,
) -> impl hyper::service::Service<HttpRequest<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible> {
    hyper::service::service_fn(move |req| {
        activity.headers_done();
        let (service, activity, connection) = (service.clone(), activity.clone(), connection.clone());
        async move {
            let response = if super::stream::is_stream(req.uri()) {
                match super::stream::upgrade(&service, &req, connection.peer) {
                    Ok((switching, upgrade)) => {
                        *connection.upgrade.borrow_mut() = Some(upgrade);
                        switching
                    }
                    // The request's body (a POST's, say) is never read here, and hyper
                    // does not keep such a connection: say so, or a client that pools it
                    // sends its next request into a closed socket (connection reset).
                    Err(refused) => response(HttpReply { close: true, ..refused.reply() }),
                }
            } else {
                service.respond(req).await
            };
            activity.answered();
            Ok::<_, Infallible>(response)
        }
    })
}

/// The HTTP response of an answer.
fn response(reply: HttpReply) -> Response<Full<Bytes>> {
    let mut response = Response::builder().status(reply.status).header("content-type", reply.content_type);
    if let Some(secs) = reply.retry_after {
        response = response.header("retry-after", secs.to_string());
    }
    if reply.close {
        response = response.header("connection", "close");
    }
    response.body(Full::new(Bytes::from(reply.body))).unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

struct InFlight<'a>(&'a Shard);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.health.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Service {
    async fn respond(&self, req: HttpRequest<Incoming>) -> Response<Full<Bytes>> {
        let shard = &self.shard;
        shard.health.inflight.fetch_add(1, Ordering::AcqRel);
        let _guard = InFlight(shard);
        shard.metrics.requests.inc();
        response(self.answer(req).await)
    }

    async fn answer(&self, req: HttpRequest<Incoming>) -> HttpReply {
        let shard = &self.shard;
        let (parts, body) = req.into_parts();
        let limit = shard.config.limits.max_body_bytes;
        if let Err(e) = framing(&parts) {
            return e.reply().closing();
        }
        let declared = parts.headers.get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let collected = futures_lite::future::or(async { Some(read_body(body, declared, limit).await) }, async {
            glommio::timer::sleep(Duration::from_secs(10)).await;
            None
        })
        .await;
        let mut body = match collected {
            Some(Ok(b)) => b,
            Some(Err(BodyError::TooLarge)) => return ApiError::BodyTooLarge(limit).reply(),
            Some(Err(BodyError::Broken)) => return invalid("body unreadable").reply().closing(),
            None => return invalid("body not received in time").reply().closing(),
        };
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        if parts.uri.path().starts_with(super::binance::PREFIX) {
            let input = super::binance::Input {
                method: parts.method.as_str(),
                path: parts.uri.path(),
                query: parts.uri.query().unwrap_or_default(),
                body: &body,
                api_key: header("x-mbx-apikey"),
            };
            return super::binance::answer(self, input).await;
        }
        let input = Input {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            api_key: header("x-api-key"),
            admin_key: header("x-admin-key"),
            body: &mut body,
        };
        let limits = Limits { map: &shard.map, admin_key: shard.config.admin_key.as_deref(), max_json_depth: shard.config.limits.max_json_depth };
        let routed = match parse::route(input, &limits) {
            Ok(r) => r,
            Err(e) => return self.refuse(e, header("x-api-key")).await.reply(),
        };
        let (to, req): (usize, ApiRequest) = match routed {
            Routed::Health => return health(shard),
            Routed::Metrics => {
                shard.all_metrics.set_hot_states(shard.health.hot.iter().map(|h| h.load(Ordering::Acquire)));
                let body = shard.all_metrics.render().into_bytes();
                return HttpReply { status: 200, body, retry_after: None, close: false, content_type: "text/plain; version=0.0.4" };
            }
            Routed::Page => {
                let body = super::PAGE.as_bytes().to_vec();
                return HttpReply { status: 200, body, retry_after: None, close: false, content_type: "text/html; charset=utf-8" };
            }
            Routed::Symbols => return render::ok(&render::symbols(&shard.map, shard.shards)),
            Routed::Check => return check(shard).await,
            Routed::Summary => return summary(shard).await,
            Routed::InsuranceFund => return insurance_fund(shard).await,
            Routed::History { partition, key, symbol, limit, before } => {
                return self.history(partition, key, symbol, limit, before).await.unwrap_or_else(|e| e.reply());
            }
            Routed::Batch { key, orders } => {
                // One after another, in order; a refused one does not stop the rest.
                let mut answers = Vec::with_capacity(orders.len());
                for order in orders {
                    let answer = match order {
                        Ok((symbol, order)) => {
                            let req = ApiRequest::Symbol(SymbolRequest::PlaceOrder { key: key.clone(), symbol, order });
                            match self.ask(shard.symbol_owner(symbol), req).await {
                                Ok(Answer::Order(v)) => serde_json::to_value(render::order(&shard.map, &v)).unwrap_or_default(),
                                Ok(_) => ApiError::Unavailable("unexpected answer".into()).body(),
                                Err(e) => e.body(),
                            }
                        }
                        Err(e) => e.body(),
                    };
                    answers.push(answer);
                }
                return render::ok(&answers);
            }
            Routed::EachSymbol(asks) => {
                let mut all = Vec::new();
                for (symbol, req) in asks {
                    match self.ask(shard.symbol_owner(symbol), ApiRequest::Symbol(req)).await {
                        Ok(Answer::Conditionals { symbol, list }) => all.extend(list.iter().map(|c| render::conditional(&shard.map.symbols[symbol], c))),
                        Ok(_) => return ApiError::Unavailable("unexpected answer".into()).reply(),
                        Err(e) => return e.reply(),
                    }
                }
                return render::ok(&all);
            }
            Routed::Symbol(symbol, req) => (shard.symbol_owner(symbol), ApiRequest::Symbol(req)),
            Routed::Partition(partition, req) => (shard.partition_owner(partition), ApiRequest::Account(req)),
        };
        match self.ask(to, req).await {
            Ok(answer) => render::answer(&shard.map, &answer),
            Err(e) => e.reply(),
        }
    }

    /// The answer to a request the edge refused. A key, when one came, is judged first:
    /// a wrong key always gets 401, whatever else is wrong with the request, so that the
    /// errors of a request tell nothing to someone without a valid key. Valid requests
    /// never pay for this; their key is checked by its owner on the way.
    async fn refuse(&self, error: ApiError, api_key: Option<&str>) -> ApiError {
        let Some(key) = api_key.filter(|_| error != ApiError::Unauthorized) else { return error };
        let Some(user) = crate::accounts::user_of_key(key) else { return ApiError::Unauthorized };
        let owner = self.shard.account_owner(user);
        match self.ask(owner, ApiRequest::authenticate(key)).await {
            Err(ApiError::Unauthorized) => ApiError::Unauthorized,
            _ => error,
        }
    }

    /// Asks shard `to` (this one, or another over the mesh). Work that changes state is
    /// posted to its owner's next batch (this core's own too), which runs it whatever
    /// becomes of this future: a client that disconnects drops only its wait for the
    /// answer, never the work half-way (between a margin lock and its log write or
    /// release). Reads are asked as they are (this core's own answered at once).
    pub(crate) async fn ask(&self, to: usize, req: ApiRequest) -> Result<Answer, ApiError> {
        let reply = if req.changes_state() {
            self.shard.rpc.send(to, Request::Api(req)).await.ok()
        } else {
            self.shard.ask(to, Request::Api(req)).await
        };
        match reply {
            Some(Reply::Api(answer)) => answer.map_err(ApiError::from),
            _ => Err(ApiError::Unavailable("shard unavailable".into())),
        }
    }

    /// `GET /v1/orders/history`: the key's owner says whose it is; cold storage answers.
    async fn history(&self, partition: u32, key: String, symbol: Option<usize>, limit: usize, before: Option<i64>) -> Result<HttpReply, ApiError> {
        let to = self.shard.partition_owner(partition);
        let Answer::User(user) = self.ask(to, ApiRequest::authenticate(&key)).await? else {
            return Err(ApiError::Unavailable("unexpected answer".into()));
        };
        let reader = self.history.as_ref().ok_or_else(|| {
            ApiError::Unavailable("order history needs cold storage (PostgreSQL and Kafka), which is not configured".into())
        })?;
        let query = HistoryQuery {
            user_id: crate::wire::account_id(user),
            symbol: symbol.map(|s| self.shard.map.symbols[s].name.clone()),
            limit,
            before,
        };
        let orders = reader.history(query).await.map_err(|e| ApiError::Unavailable(format!("cold storage unavailable: {e}")))?;
        Ok(render::ok(&orders))
    }
}

/// What is refused before the body is read: too many or too large headers (431), or a
/// chunked body (400: bodies here are small JSON and must say their length). Both close
/// the connection after the answer, since what follows on it cannot be trusted to be the
/// next request.
fn framing(parts: &hyper::http::request::Parts) -> Result<(), ApiError> {
    let headers = &parts.headers;
    if headers.len() > MAX_HEADERS {
        return Err(ApiError::HeadersTooLarge(format!("more than {MAX_HEADERS} headers")));
    }
    let size: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
    if size > MAX_HEADER_BYTES {
        return Err(ApiError::HeadersTooLarge(format!("headers larger than {MAX_HEADER_BYTES} bytes")));
    }
    if headers.contains_key(hyper::header::TRANSFER_ENCODING) {
        return Err(invalid("Transfer-Encoding is not accepted: send the body with a Content-Length"));
    }
    Ok(())
}

enum BodyError {
    TooLarge,
    /// The connection failed or the body did not match its framing.
    Broken,
}

/// Reads a body of at most `limit` bytes into a buffer of at most that size, so a
/// connection holds at most hyper's 16 KiB read buffer plus `limit` (README, "Limits").
/// A larger body is read on and dropped, up to 16 times the limit, so that the client,
/// still sending, reads the 413 that follows rather than a connection reset; one that
/// declares more than that is refused at once.
async fn read_body(mut body: Incoming, declared: Option<u64>, limit: usize) -> Result<Vec<u8>, BodyError> {
    let drain = limit.saturating_mul(16);
    if declared.is_some_and(|n| n > drain as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut out = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Broken)?;
        if let Some(data) = frame.data_ref() {
            seen += data.len();
            if seen <= limit {
                out.extend_from_slice(data);
            } else if seen > drain {
                return Err(BodyError::TooLarge);
            }
        }
    }
    if seen > limit { Err(BodyError::TooLarge) } else { Ok(out) }
}

/// `GET /admin/v1/summary`: every shard's money summed, unrealized PnL at each symbol's
/// last trade price. Balanced when deposits = balances + unrealized PnL + fees.
async fn summary(shard: &Rc<Shard>) -> HttpReply {
    let mut totals = crate::accounts::Totals::default();
    for to in 0..shard.shards {
        match shard.ask(to, Request::Summary).await {
            Some(Reply::Summary(t)) => totals.add(t),
            _ => return ApiError::Unavailable(format!("shard {to} did not answer")).reply(),
        }
    }
    match prices(shard).await {
        Ok(prices) => render::ok(&render::summary(&shard.map, &totals, &prices)),
        Err(e) => e.reply(),
    }
}

/// Every symbol's prices and insurance fund, from their owners.
async fn prices(shard: &Rc<Shard>) -> Result<Vec<(usize, MarketPrices)>, ApiError> {
    let mut all = Vec::new();
    for to in 0..shard.shards {
        match shard.ask(to, Request::Prices).await {
            Some(Reply::Prices(p)) => all.extend(p),
            _ => return Err(ApiError::Unavailable(format!("shard {to} did not answer"))),
        }
    }
    Ok(all)
}

/// `GET /v1/insurance-fund`: the fund, summed over the symbols (each holds its part).
async fn insurance_fund(shard: &Rc<Shard>) -> HttpReply {
    match prices(shard).await {
        Ok(prices) => {
            let fund: i128 = prices.iter().map(|(_, p)| p.fund).sum();
            render::ok(&serde_json::json!({ "currency": "USDT", "balance": crate::engine::symbol::units_to_usdt(fund).to_string() }))
        }
        Err(e) => e.reply(),
    }
}

/// `POST /admin/v1/check`: one consistency check on every shard, reported together.
async fn check(shard: &Rc<Shard>) -> HttpReply {
    let mut users = 0;
    let mut repaired = Vec::new();
    for to in 0..shard.shards {
        match shard.ask(to, Request::Check).await {
            Some(Reply::Checked(Ok(r))) => {
                users += r.users;
                repaired.extend(r.repaired);
            }
            Some(Reply::Checked(Err(e))) => return ApiError::Unavailable(format!("shard {to}: {e}")).reply(),
            _ => return ApiError::Unavailable(format!("shard {to} did not answer")).reply(),
        }
    }
    render::ok(&serde_json::json!({ "clean": repaired.is_empty(), "users": users, "repaired": repaired }))
}

fn health(shard: &Shard) -> HttpReply {
    let superseded = shard.health.superseded.load(Ordering::Acquire);
    let log_ok = shard.health.event_log_down.load(Ordering::Acquire) == 0 && !superseded;
    let worst = shard.health.hot.iter().map(|h| h.load(Ordering::Acquire)).filter(|s| *s != hot::DISABLED).min();
    let state = match worst {
        None | Some(hot::READY) => "ok",
        Some(hot::REBUILDING) => "rebuilding",
        Some(_) => "down",
    };
    let cold = match shard.health.cold.load(Ordering::Acquire) {
        cold::OK => "ok",
        cold::DOWN => "down",
        cold::LAGGING => "lagging",
        _ => "disabled",
    };
    let stale: Vec<&str> =
        shard.health.stale_indexes(crate::shard::core::now_ms()).into_iter().map(|s| shard.map.symbols[s].name.as_str()).collect();
    let (wanted, actual) = (shard.health.replication_wanted.load(Ordering::Acquire), shard.health.replication_actual.load(Ordering::Acquire));
    let mut body = serde_json::json!({
        "status": if log_ok && state == "ok" && stale.is_empty() { "ok" } else { "degraded" },
        "components": {
            "eventLog": if superseded { "superseded" } else if log_ok { "ok" } else { "down" },
            "stateStore": state,
            "coldStore": cold,
            "indexPrice": if stale.is_empty() { "ok" } else { "stale" },
        },
        "staleIndex": stale,
    });
    // Kafka only: how many copies the log's topics have. Fewer than asked for is not an
    // outage (status stays as it is) but a weaker promise, said on every call.
    if wanted > 0 {
        body["eventLogReplication"] = serde_json::json!({
            "status": if actual < wanted { "under-replicated" } else { "ok" },
            "wanted": wanted,
            "actual": actual,
        });
    }
    render::ok(&body)
}
