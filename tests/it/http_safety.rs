//! The HTTP surface against hostile or careless clients: web pages on other
//! sites (cross-site requests, DNS rebinding, framing), slow and idle
//! connections, webhook signatures as Twilio's own validator accepts them, and
//! the shape of every refusal.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use flowcast::service::webhook::{SignatureAlgorithm, body_sha256, sign, sign_with};
use flowcast::service::{HttpConfig, Service, ServiceSettings, serve_http};
use flowcast::studio::simulator::{SimConfig, Simulator};
use serde_json::Value;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;
use crate::service::{Served, eventually, free_port};

const ADMIN: &str = "admin-secret-for-tests";
const PUBLIC: &str = "https://flowcast.example.com";
const EVIL: &str = "https://evil.example";

/// Asserts the API's one error shape: `{"error": {"code": …, "message": …}}`.
fn assert_error_shape(body: &Value) {
    assert!(
        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
        "not the API's error shape: {body}"
    );
}

async fn status_and_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The port of a served URL such as `http://127.0.0.1:4321`.
fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// A one-off campaign of 60 contacts at one per second: its run stays active
/// for the length of a test.
fn slow_campaign(app: &TestApp) {
    app.write("c.csv", contacts_csv(&phones(60)));
    app.write("c.toml", campaign_toml("c.csv", "rate = 1"));
}

async fn run_state(client: &reqwest::Client, served: &Served) -> String {
    let run: Value = client.get(format!("{}/api/runs/1", served.url)).send().await.unwrap().json().await.unwrap();
    run["state"].as_str().unwrap_or_default().to_string()
}

async fn wait_for_run(client: &reqwest::Client, served: &Served) {
    assert!(
        eventually(Duration::from_secs(10), async || run_state(client, served).await == "active").await,
        "run 1 never became active:\n{}",
        served.log()
    );
}

#[tokio::test]
async fn a_cross_site_page_cannot_control_a_run_but_the_dashboard_and_scripts_can() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    slow_campaign(&app);
    let served = Served::start(&app, &sim.url()).await;
    let client = reqwest::Client::new();
    wait_for_run(&client, &served).await;
    let cancel = format!("{}/api/runs/1/cancel", served.url);

    // A form or fetch from another site: a "simple" request, no preflight.
    let from_evil = client
        .post(&cancel)
        .header("origin", EVIL)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(from_evil).await;
    assert_eq!(status, 403, "{body}");
    assert_error_shape(&body);
    // Browsers that send no Origin still say where the request comes from.
    for site in ["cross-site", "same-site"] {
        let r = client.post(&cancel).header("sec-fetch-site", site).send().await.unwrap();
        let (status, body) = status_and_json(r).await;
        assert_eq!(status, 403, "Sec-Fetch-Site: {site}: {body}");
        assert_error_shape(&body);
    }
    let null_origin = client.post(&cancel).header("origin", "null").send().await.unwrap();
    assert_eq!(null_origin.status(), 403, "an opaque origin is not ours");
    assert_eq!(run_state(&client, &served).await, "active", "nothing cross-site touched the run");

    // The dashboard's own request: same origin.
    let from_dashboard = client
        .post(format!("{}/api/runs/1/pause", served.url))
        .header("origin", &served.url)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(from_dashboard.status(), 200);
    // A script or curl: neither header.
    let from_curl = client.post(format!("{}/api/runs/1/resume", served.url)).send().await.unwrap();
    assert_eq!(from_curl.status(), 200);
    served.terminate().await;
}

#[tokio::test]
async fn a_request_naming_a_foreign_host_is_refused_so_dns_rebinding_cannot_read_phone_numbers() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    slow_campaign(&app);
    let served = Served::start_with(&app, &sim.url(), &[("FLOWCAST_PUBLIC_URL", PUBLIC)]).await;
    let client = reqwest::Client::new();
    wait_for_run(&client, &served).await;
    let port = port_of(&served.url);
    let jobs = format!("{}/api/runs/1/jobs", served.url);

    // A page on attacker.example whose name now resolves to 127.0.0.1.
    for path in ["/api/runs/1/jobs", "/", "/api/runs", "/metrics"] {
        let r = client
            .get(format!("{}{path}", served.url))
            .header("host", format!("attacker.example:{port}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path} for Host attacker.example");
        let text = r.text().await.unwrap();
        assert!(!text.contains("+1201555"), "no phone number leaks: {text}");
        assert_error_shape(&serde_json::from_str(&text).unwrap());
    }
    let wrong_port = client.get(&jobs).header("host", "localhost:1").send().await.unwrap();
    assert_eq!(wrong_port.status(), 403, "a loopback name on another port is another origin");

    // The names this server is reached by.
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")] {
        let r = client.get(&jobs).header("host", &host).send().await.unwrap();
        assert_eq!(r.status(), 200, "Host {host}");
    }
    for host in ["flowcast.example.com", "flowcast.example.com:443", "FlowCast.Example.COM"] {
        let r = client.get(&jobs).header("host", host).send().await.unwrap();
        assert_eq!(r.status(), 200, "Host {host}: the public URL's host, as a TLS-terminating proxy passes it");
    }

    // Health and webhooks answer whatever the Host: probes address the
    // machine by IP, and a webhook's signature is its guard.
    let health = client.get(format!("{}/healthz", served.url)).header("host", "10.0.0.7:8080").send().await.unwrap();
    assert_eq!(health.status(), 200);
    let body = r#"[{"type":"com.example.other"}]"#;
    let query = format!("bodySHA256={}", body_sha256(body.as_bytes()));
    let delivered = client
        .post(format!("{}/webhooks/studio?{query}", served.url))
        .header("host", "attacker.example")
        .header("x-twilio-signature", sign(TOKEN, &format!("{PUBLIC}/webhooks/studio?{query}")))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(delivered.status(), 200);
    served.terminate().await;
}

/// The contents of the page's one `<tag>…</tag>` element.
fn inline(page: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = page.find(&open).unwrap_or_else(|| panic!("no <{tag}>")) + open.len();
    let end = page[start..].find(&format!("</{tag}>")).unwrap() + start;
    page[start..end].to_string()
}

fn csp_hash(text: &str) -> String {
    format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(text.as_bytes())))
}

#[tokio::test]
async fn the_dashboard_cannot_be_framed_and_runs_only_its_own_inline_script_and_style() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let served = Served::start(&app, &sim.url()).await;

    let r = reqwest::get(format!("{}/", served.url)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_string();
    let page = r.text().await.unwrap();

    let directive = |name: &str| -> String {
        csp.split(';')
            .map(str::trim)
            .find(|d| d.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in {csp}"))
            .to_string()
    };
    assert_eq!(directive("default-src"), "default-src 'none'");
    assert_eq!(directive("frame-ancestors"), "frame-ancestors 'none'");
    assert_eq!(directive("script-src"), format!("script-src {}", csp_hash(&inline(&page, "script"))));
    assert_eq!(directive("style-src"), format!("style-src {}", csp_hash(&inline(&page, "style"))));
    assert_eq!(directive("connect-src"), "connect-src 'self'");
    assert!(!csp.contains("unsafe"), "{csp}");
    // What such a policy would block, the page does not use: style
    // attributes in markup, inline event handlers, javascript: URLs.
    for blocked in [" style=", " onclick=", " onload=", "javascript:"] {
        assert!(!page.contains(blocked), "the page uses {blocked:?}, which the policy blocks");
    }
    served.terminate().await;
}

#[tokio::test]
async fn a_delivery_signed_over_the_url_with_or_without_its_default_port_is_accepted() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let served = Served::start_with(&app, &sim.url(), &[("FLOWCAST_PUBLIC_URL", PUBLIC)]).await;
    // A second serve needs a ledger of its own (one dispatcher per ledger).
    let other = TestApp::new();
    let with_port =
        Served::start_with(&other, &sim.url(), &[("FLOWCAST_PUBLIC_URL", "https://flowcast.example.com:443")]).await;
    let body = r#"[{"type":"com.example.other"}]"#;
    let query = format!("bodySHA256={}", body_sha256(body.as_bytes()));
    let deliver = async |served: &Served, signed_url: &str| -> u16 {
        reqwest::Client::new()
            .post(format!("{}/webhooks/studio?{query}", served.url))
            .header("x-twilio-signature", sign(TOKEN, &format!("{signed_url}/webhooks/studio?{query}")))
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };

    // Twilio's validator accepts both forms, whichever the public URL is written in.
    assert_eq!(deliver(&served, "https://flowcast.example.com").await, 200);
    assert_eq!(deliver(&served, "https://flowcast.example.com:443").await, 200);
    assert_eq!(deliver(&with_port, "https://flowcast.example.com").await, 200);
    assert_eq!(deliver(&with_port, "https://flowcast.example.com:443").await, 200);
    // Another port, or another scheme's default, is another URL.
    assert_eq!(deliver(&served, "https://flowcast.example.com:8443").await, 403);
    assert_eq!(deliver(&served, "https://flowcast.example.com:80").await, 403);
    assert_eq!(deliver(&served, "http://flowcast.example.com").await, 403);
    served.terminate().await;
    with_port.terminate().await;
}

#[tokio::test]
async fn a_delivery_signed_with_hmac_sha256_as_its_signature_settings_header_says_is_accepted() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let served = Served::start_with(&app, &sim.url(), &[("FLOWCAST_PUBLIC_URL", PUBLIC)]).await;
    let body = r#"[{"type":"com.example.other"}]"#;
    let query = format!("bodySHA256={}", body_sha256(body.as_bytes()));
    let url = format!("{PUBLIC}/webhooks/studio?{query}");
    let deliver = async |signature: String, settings: Option<&str>| -> u16 {
        let mut request = reqwest::Client::new()
            .post(format!("{}/webhooks/studio?{query}", served.url))
            .header("x-twilio-signature", signature)
            .body(body);
        if let Some(settings) = settings {
            request = request.header("x-twilio-webhooks-signature-settings", settings);
        }
        request.send().await.unwrap().status().as_u16()
    };
    let sha256 = sign_with(SignatureAlgorithm::HmacSha256, TOKEN, &url);
    let sha1 = sign(TOKEN, &url);

    assert_eq!(
        deliver(sha256.clone(), Some("key=KS0123456789abcdef0123456789abcdef,algorithm=HMAC_SHA256")).await,
        200
    );
    assert_eq!(deliver(sha256.clone(), Some("algorithm=HMAC_SHA256, key=KS01")).await, 200, "in any order");
    assert_eq!(deliver(sha1.clone(), Some("key=KS01,algorithm=HMAC_SHA1")).await, 200);
    // The header decides the algorithm: a signature made with the other one fails.
    assert_eq!(deliver(sha1.clone(), Some("key=KS01,algorithm=HMAC_SHA256")).await, 403);
    assert_eq!(deliver(sha256.clone(), None).await, 403, "without the header the signature is HMAC-SHA1");
    assert_eq!(deliver(sha256, Some("key=KS01,algorithm=HMAC_MD5")).await, 403, "an unknown algorithm is refused");
    assert_eq!(deliver(sha1, None).await, 200);
    served.terminate().await;
}

#[tokio::test]
async fn serve_warns_at_start_when_webhooks_are_checked_without_a_public_url() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let served = Served::start(&app, &sim.url()).await;
    assert!(
        eventually(Duration::from_secs(10), async || served.log().contains("FLOWCAST_PUBLIC_URL is not set")).await,
        "{}",
        served.log()
    );
    let (_, log) = served.terminate().await;
    assert!(log.contains("WARN"), "{log}");

    let other = TestApp::new();
    let served = Served::start_with(&other, &sim.url(), &[("FLOWCAST_PUBLIC_URL", PUBLIC)]).await;
    let (_, log) = served.terminate().await;
    assert!(log.contains("flowcast serve started"), "{log}");
    assert!(!log.contains("FLOWCAST_PUBLIC_URL is not set"), "no warning with a public URL:\n{log}");
}

#[tokio::test]
async fn the_authorization_scheme_is_accepted_in_any_case() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let served = Served::start_with(&app, &sim.url(), &[("FLOWCAST_ADMIN_TOKEN", ADMIN)]).await;
    let client = reqwest::Client::new();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("admin:{ADMIN}"));
    for header in
        [format!("Bearer {ADMIN}"), format!("bearer {ADMIN}"), format!("BEARER {ADMIN}"), format!("basic {basic}")]
    {
        let r = client.get(format!("{}/api/runs", served.url)).header("authorization", &header).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", header.split(' ').next().unwrap());
    }
    let r =
        client.get(format!("{}/api/runs", served.url)).header("authorization", "bearer wrong").send().await.unwrap();
    let (status, body) = status_and_json(r).await;
    assert_eq!(status, 401);
    assert_error_shape(&body);
    served.terminate().await;
}

#[tokio::test]
async fn serve_listens_on_a_host_name_such_as_localhost() {
    let app = TestApp::new();
    let port = free_port();
    let listen = format!("localhost:{port}");
    let mut child = app.spawn_flowcast(&["serve", "--simulate"], &[("FLOWCAST_LISTEN", listen.as_str())]);
    let client = reqwest::Client::new();
    let healthy = eventually(Duration::from_secs(20), async || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("serve exited with {status}");
        }
        client.get(format!("http://localhost:{port}/healthz")).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(healthy, "serve never answered on {listen}");
    let runs = client.get(format!("http://localhost:{port}/api/runs")).send().await.unwrap();
    assert_eq!(runs.status(), 200, "the listen name is a name this server is reached by");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn bad_path_and_query_values_are_answered_400_in_json_naming_what_is_wrong() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let served = Served::start(&app, &sim.url()).await;
    let client = reqwest::Client::new();

    for (method, path, names) in [
        ("GET", "/api/runs/abc", "abc"),
        ("GET", "/api/runs/99999999999999999999/jobs", "99999999999999999999"),
        ("POST", "/api/runs/abc/pause", "abc"),
        ("GET", "/api/runs/1/jobs?limit=ten", "limit"),
        ("GET", "/api/runs/1/jobs?after=last", "after"),
        ("GET", "/api/runs?limit=-1", "limit"),
        ("GET", "/api/problems?limit=lots", "limit"),
    ] {
        let method: reqwest::Method = method.parse().unwrap();
        let r = client.request(method, format!("{}{path}", served.url)).send().await.unwrap();
        assert_eq!(r.headers()["content-type"], "application/json", "{path}");
        let (status, body) = status_and_json(r).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_error_shape(&body);
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{path}: {message:?} names {names:?}");
    }
    // Good values still page as before.
    let r = client.get(format!("{}/api/runs?limit=5", served.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    served.terminate().await;
}

/// `serve`'s HTTP server in this process, with short connection timeouts.
async fn serve_in_process(
    app: &TestApp,
    config: HttpConfig,
) -> (std::net::SocketAddr, tokio_util::sync::CancellationToken) {
    let clock = Arc::new(flowcast::schedule::SystemClock);
    // Nothing is dispatched in these tests; the URL is never called.
    let dispatcher = app.dispatcher_on("http://127.0.0.1:9", clock.clone()).await;
    let service = Arc::new(Service::new(
        app.store().await,
        dispatcher,
        clock,
        app.folders(),
        ServiceSettings::default(),
        Box::new(flowcast::flows::SidOnly),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(serve_http(listener, service, config, shutdown.clone()));
    (addr, shutdown)
}

/// Reads until the server closes the connection; returns all it sent.
async fn read_until_closed(socket: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept the connection open for 30 s; it sent {:?}",
        String::from_utf8_lossy(&got)
    );
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_connection_that_stops_midway_through_its_request_line_is_closed() {
    let app = TestApp::new();
    let config = HttpConfig { header_read_timeout: Duration::from_millis(300), ..HttpConfig::default() };
    let (addr, shutdown) = serve_in_process(&app, config).await;

    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /api/ru").await.unwrap();
    read_until_closed(&mut slow).await;

    let mut silent = TcpStream::connect(addr).await.unwrap();
    read_until_closed(&mut silent).await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_keep_alive_connection_left_idle_after_its_answer_is_closed() {
    let app = TestApp::new();
    let config = HttpConfig { header_read_timeout: Duration::from_millis(300), ..HttpConfig::default() };
    let (addr, shutdown) = serve_in_process(&app, config).await;

    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let answered = read_until_closed(&mut socket).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    shutdown.cancel();
}

#[tokio::test]
async fn a_request_whose_body_stops_arriving_is_answered_408_and_closed() {
    let app = TestApp::new();
    let config = HttpConfig { request_timeout: Duration::from_millis(300), ..HttpConfig::default() };
    let (addr, shutdown) = serve_in_process(&app, config).await;

    let mut socket = TcpStream::connect(addr).await.unwrap();
    let head = format!("POST /webhooks/studio HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000\r\n\r\n[{{\"type\"");
    socket.write_all(head.as_bytes()).await.unwrap();
    let answered = read_until_closed(&mut socket).await;
    assert!(answered.starts_with("HTTP/1.1 408"), "{answered}");
    shutdown.cancel();
}
