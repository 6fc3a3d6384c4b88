//! `GET /`, the live market page, in a real headless browser: Debian's `chromium`, driven
//! through `chromedriver` (W3C WebDriver over HTTP). The page must show a trade within a
//! second of it happening. The browser is required, like the other services the suite
//! uses: without it the test fails, it does not skip.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::{json, Value};

struct Driver {
    child: Child,
    url: String,
    session: String,
    agent: ureq::Agent,
}

impl Driver {
    fn start() -> Self {
        let port = exchange_io::ports::free_listen_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is required for the page test (Debian: apt-get install chromium chromium-driver)");
        let url = format!("http://127.0.0.1:{port}");
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent.get(&format!("{url}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| std::path::Path::new(p).exists()).expect("chromium");
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": binary, "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] }
        }}});
        let reply: Value = agent.post(&format!("{url}/session")).send_json(capabilities).expect("a browser session").into_json().unwrap();
        let session = reply["value"]["sessionId"].as_str().expect("sessionId").to_owned();
        Self { child, url, session, agent }
    }

    fn go(&self, page: &str) {
        self.agent.post(&format!("{}/session/{}/url", self.url, self.session)).send_json(json!({ "url": page })).unwrap();
    }

    fn script(&self, script: &str) -> Value {
        let reply: Value = self
            .agent
            .post(&format!("{}/session/{}/execute/sync", self.url, self.session))
            .send_json(json!({ "script": script, "args": [] }))
            .unwrap()
            .into_json()
            .unwrap();
        reply["value"].clone()
    }

    fn wait(&self, script: &str, within: Duration, what: &str) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.script(script);
            if !v.is_null() && v != Value::Bool(false) {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: not within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.agent.delete(&format!("{}/session/{}", self.url, self.session)).call();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_page_shows_a_trade_within_a_second_of_it_happening() {
    let s = Server::start();
    let (status, html) = s.request("GET", "/", &[], None);
    assert_eq!(status, 200);
    assert!(html.as_str().is_some_and(|h| h.contains("<canvas") && !h.contains("http://") && !h.contains("https://")), "self-contained");
    let alice = s.funded("alice", "100000");
    let bob = s.funded("bob", "100000");
    s.limit(&alice, "BUY", "49990", "0.004");
    let browser = Driver::start();
    browser.go(&s.url("/?symbol=BTC-PERP"));
    browser.wait("return document.getElementById('status').textContent === 'live: BTC-PERP'", Duration::from_secs(20), "the page subscribed");
    // The book the page shows has the resting bid.
    browser.wait("return document.getElementById('bids').textContent.includes('49990')", Duration::from_secs(5), "the bid in the book");
    s.limit(&alice, "SELL", "50000", "0.002");
    let traded = Instant::now();
    let trade = s.limit(&bob, "BUY", "50000", "0.002");
    assert_eq!(trade["status"], "FILLED");
    let (_, trades) = s.request("GET", "/v1/trades?symbol=BTC-PERP&limit=1", &[], None);
    let id = trades[0]["tradeId"].as_str().unwrap().to_owned();
    let shown = browser.wait(
        &format!("const r = document.querySelector('#trades tr'); return r && r.dataset.tradeId === '{id}' && r.textContent"),
        Duration::from_secs(1),
        "the trade on the page",
    );
    assert!(traded.elapsed() < Duration::from_secs(1));
    assert!(shown.as_str().unwrap().contains("50000"), "{shown}");
    // The depth chart drew something.
    let drawn = browser.script(
        "const c = document.getElementById('chart'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
         for (let i = 3; i < d.length; i += 4) if (d[i] > 0) return true; return false;",
    );
    assert_eq!(drawn, Value::Bool(true), "the depth chart is empty");
}

#[test]
fn the_page_keeps_one_connection_across_symbol_changes() {
    let s = Server::start();
    let alice = s.funded("alice", "100000");
    let bob = s.funded("bob", "100000");
    let browser = Driver::start();
    browser.go(&s.url("/?symbol=BTC-PERP"));
    browser.wait("return document.getElementById('status').textContent === 'live: BTC-PERP'", Duration::from_secs(20), "the page subscribed");
    let choose = |symbol: &str| {
        browser.script(&format!("const s = document.getElementById('symbol'); s.value = '{symbol}'; s.dispatchEvent(new Event('change')); return true;"));
        browser.wait(&format!("return document.getElementById('status').textContent === 'live: {symbol}'"), Duration::from_secs(5), symbol);
    };
    choose("ETH-PERP");
    choose("BTC-PERP");
    // Long enough for a reconnect loop (a second apart) to show.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(s.metric("exchange_stream_connections", ""), 1, "stream connections open");
    assert_eq!(s.metric("exchange_stream_connections_opened_total", ""), 1, "stream connections opened");
    // The one connection carries the symbol chosen last, and only it.
    let eth = |key: &str, side: &str| {
        let (status, body) = s.order(key, &format!(r#"{{"symbol":"ETH-PERP","side":"{side}","type":"LIMIT","price":"2000","quantity":"0.05","leverage":10}}"#));
        assert_eq!(status, 200, "{body}");
        body
    };
    eth(&alice, "SELL");
    assert_eq!(eth(&bob, "BUY")["status"], "FILLED");
    s.limit(&alice, "SELL", "50000", "0.002");
    assert_eq!(s.limit(&bob, "BUY", "50000", "0.002")["status"], "FILLED");
    browser.wait("const r = document.querySelector('#trades tr'); return r && r.textContent.includes('50000')", Duration::from_secs(2), "the BTC-PERP trade");
    let rows = browser.script("return document.querySelectorAll('#trades tr').length");
    assert_eq!(rows, json!(1), "only the BTC-PERP trade is shown");
}
