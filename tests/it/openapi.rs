//! The API as described: `src/service/openapi.json` checked against a running
//! `serve`. The test knows no route by itself; it reads the document and, for
//! every path and method in it, builds requests from the document's own
//! examples, sends them, and checks that each answer's status is one the
//! operation documents and that its body matches the schema documented for
//! that status and content type.
//!
//! How requests are built from the document:
//!
//! - A request example (of a parameter or a body) and a response example of
//!   the same name belong together: the request example `unknown` must be
//!   answered with the status whose response carries the example `unknown`.
//!   A request example with no namesake among the responses must be answered
//!   with one of the operation's 2xx statuses.
//! - The base request takes, for each parameter and for the body, the first
//!   example expected to succeed; each other example is sent in the base
//!   request's place, one at a time; a request with only what is required is
//!   sent too.
//! - A few refusals the test provokes by itself, when the operation documents
//!   them with a response example of that name: `unauthorized` (no token, a
//!   wrong token), `host_not_served`, `cross_site`, `unsigned`,
//!   `bad_signature`, `malformed_json`, `unsupported_media_type`,
//!   `payload_too_large`.
//! - Requests that must be refused are sent before those that must succeed,
//!   so that what a success made (a run under an idempotency key, a lifted
//!   suppression) cannot hide a refusal.
//!
//! Every status an operation documents must be answered at least once, except
//! those that need a fault ([`NEEDS_A_FAULT`]); every path answers a method it
//! does not document with 405 (naming the documented ones in `Allow`) in the
//! API's error shape.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine;
use flowcast::service::webhook::{body_sha256, form_signing_string, sign};
use flowcast::studio::simulator::{SimConfig, Simulator};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::service::{Served, eventually};

/// The document, as the binary compiles it in.
const DOCUMENT: &str = include_str!("../../src/service/openapi.json");
const ADMIN: &str = "admin-token-for-the-openapi-test";
/// `FLOWCAST_PUBLIC_URL`: what Twilio signs webhook URLs with.
const PUBLIC: &str = "https://flowcast.example.com";
const OPERATION_METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
/// Methods sent to each path to see that those it does not document are refused.
const PROBED_METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Statuses that no request can draw from a healthy server: a request cut
/// off mid-body (408; `http_safety.rs` covers it), a failing ledger (500), an
/// unwritable one (503), ending Executions that outlasts the request (202)
/// or that Studio refuses (502; `executions.rs` covers ending).
const NEEDS_A_FAULT: [&str; 5] = ["408", "500", "503", "202", "502"];

struct Spec {
    doc: Value,
}

/// One operation: a path and a method.
struct Operation<'a> {
    path: &'a str,
    method: &'a str,
    op: &'a Value,
}

impl Operation<'_> {
    fn label(&self) -> String {
        format!("{} {}", self.method.to_uppercase(), self.path)
    }
}

#[derive(Clone)]
struct Param {
    name: String,
    location: String,
    required: bool,
    schema: Value,
    examples: Vec<(String, Value)>,
}

/// One media type of a request body.
struct Media {
    name: String,
    schema: Value,
    examples: Vec<(String, Value)>,
}

/// A request body's media types, each with its schema and examples.
struct BodySpec {
    required: bool,
    /// `x-max-body-bytes`: the largest body the endpoint reads.
    limit: Option<usize>,
    media: Vec<Media>,
}

impl Spec {
    fn load() -> Spec {
        Spec { doc: serde_json::from_str(DOCUMENT).expect("src/service/openapi.json is JSON") }
    }

    fn pointer(&self, reference: &str) -> Option<&Value> {
        reference.strip_prefix('#').and_then(|p| self.doc.pointer(p))
    }

    /// The object a `$ref` (of a parameter, response or body) names, or the
    /// object itself.
    fn resolve<'a>(&'a self, mut value: &'a Value) -> &'a Value {
        while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
            value = self.pointer(reference).unwrap_or_else(|| panic!("$ref {reference} does not resolve"));
        }
        value
    }

    fn operations(&self) -> Vec<Operation<'_>> {
        let mut out = Vec::new();
        for (path, item) in self.doc["paths"].as_object().expect("paths is an object") {
            for method in OPERATION_METHODS {
                if let Some(op) = item.get(method) {
                    out.push(Operation { path, method, op });
                }
            }
        }
        out
    }

    fn documented_methods(&self, path: &str) -> BTreeSet<String> {
        OPERATION_METHODS
            .iter()
            .filter(|m| self.doc["paths"][path].get(**m).is_some())
            .map(|m| m.to_uppercase())
            .collect()
    }

    fn params(&self, o: &Operation) -> Vec<Param> {
        let shared = self.doc["paths"][o.path].get("parameters").and_then(Value::as_array).cloned().unwrap_or_default();
        let own = o.op.get("parameters").and_then(Value::as_array).cloned().unwrap_or_default();
        shared
            .iter()
            .chain(&own)
            .map(|p| {
                let p = self.resolve(p);
                Param {
                    name: p["name"].as_str().expect("a parameter has a name").to_string(),
                    location: p["in"].as_str().expect("a parameter has `in`").to_string(),
                    required: p["required"].as_bool().unwrap_or(false),
                    schema: p.get("schema").cloned().unwrap_or(json!({})),
                    examples: named_examples(p),
                }
            })
            .collect()
    }

    fn body(&self, o: &Operation) -> Option<BodySpec> {
        let body = self.resolve(o.op.get("requestBody")?);
        let media = body["content"]
            .as_object()
            .expect("a request body has content")
            .iter()
            .map(|(name, m)| Media {
                name: name.clone(),
                schema: m.get("schema").cloned().unwrap_or(json!({})),
                examples: named_examples(m),
            })
            .collect();
        let limit = body.get("x-max-body-bytes").and_then(Value::as_u64).map(|n| n as usize);
        Some(BodySpec { required: body["required"].as_bool().unwrap_or(false), limit, media })
    }

    fn responses<'a>(&'a self, o: &Operation<'a>) -> BTreeMap<String, &'a Value> {
        o.op["responses"]
            .as_object()
            .map(|r| r.iter().map(|(status, response)| (status.clone(), self.resolve(response))).collect())
            .unwrap_or_default()
    }

    /// The status whose response carries an example of this name.
    fn status_of_example(&self, o: &Operation, name: &str) -> Option<String> {
        self.responses(o).into_iter().find_map(|(status, response)| {
            let content = response.get("content")?.as_object()?;
            content.values().any(|m| m.get("examples").is_some_and(|e| e.get(name).is_some())).then_some(status)
        })
    }

    /// The security schemes an operation accepts.
    fn schemes(&self, o: &Operation) -> Vec<&Value> {
        let requirements = o.op.get("security").unwrap_or(&self.doc["security"]);
        requirements
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .flat_map(|r| r.keys())
            .map(|name| &self.doc["components"]["securitySchemes"][name])
            .collect()
    }

    fn needs_admin_token(&self, o: &Operation) -> bool {
        self.schemes(o).iter().any(|s| s["type"] == "http")
    }

    fn twilio_signed(&self, o: &Operation) -> bool {
        self.schemes(o).iter().any(|s| {
            s["type"] == "apiKey"
                && s["in"] == "header"
                && s["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case("x-twilio-signature"))
        })
    }

    /// Checks `instance` against `schema`, whose `$ref`s point into
    /// `components/schemas`: the schema is placed in a document that carries
    /// those components, where the references resolve as in this one.
    fn compile(&self, schema: &Value) -> Result<jsonschema::Validator, String> {
        let wrapper = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": { "schemas": self.doc["components"]["schemas"] },
            "allOf": [schema],
        });
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&wrapper)
            .map_err(|e| format!("the schema does not compile: {e}"))
    }

    fn check_schema(&self, schema: &Value, instance: &Value) -> Result<(), String> {
        let validator = self.compile(schema)?;
        let errors: Vec<String> =
            validator.iter_errors(instance).map(|e| format!("{e} (at {:?})", e.instance_path().as_str())).collect();
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }
}

fn named_examples(holder: &Value) -> Vec<(String, Value)> {
    holder
        .get("examples")
        .and_then(Value::as_object)
        .map(|e| e.iter().map(|(name, example)| (name.clone(), example["value"].clone())).collect())
        .unwrap_or_default()
}

/// A parameter's value as it is written in a URL or header.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Percent-encodes a path segment.
fn segment(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'+' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Credentials {
    Bearer,
    Basic,
    Missing,
    Wrong,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Signature {
    Valid,
    Missing,
    Wrong,
}

#[derive(Clone)]
struct Body {
    media: String,
    bytes: Vec<u8>,
    /// A form body's fields, which Twilio's signature covers.
    fields: Vec<(String, String)>,
}

impl Body {
    /// A body from an example of `media`.
    fn from_example(media: &str, value: &Value) -> Result<Body, String> {
        let essence = media.split(';').next().unwrap_or("").trim();
        if essence.ends_with("json") {
            Ok(Body { media: media.into(), bytes: serde_json::to_vec(value).unwrap(), fields: vec![] })
        } else if essence == "application/x-www-form-urlencoded" {
            let fields: Vec<(String, String)> = value
                .as_object()
                .ok_or("a form example must be an object")?
                .iter()
                .map(|(k, v)| (k.clone(), text(v)))
                .collect();
            let bytes = form_urlencoded::Serializer::new(String::new()).extend_pairs(&fields).finish().into_bytes();
            Ok(Body { media: media.into(), bytes, fields })
        } else {
            let text = value.as_str().ok_or_else(|| format!("a {media} example must be a string"))?;
            Ok(Body { media: media.into(), bytes: text.as_bytes().to_vec(), fields: vec![] })
        }
    }

    fn raw(media: &str, bytes: Vec<u8>) -> Body {
        Body { media: media.into(), bytes, fields: vec![] }
    }
}

/// One request of an operation and what it must be answered with.
#[derive(Clone)]
struct Case {
    label: String,
    values: BTreeMap<String, Value>,
    body: Option<Body>,
    credentials: Credentials,
    signature: Signature,
    host: Option<&'static str>,
    origin: Option<&'static str>,
    /// The exact status, or `None` for any 2xx the operation documents.
    expect: Option<String>,
}

impl Case {
    fn with(&self, label: impl Into<String>, expect: Option<String>, change: impl FnOnce(&mut Case)) -> Case {
        let mut case = Case { label: label.into(), expect, ..self.clone() };
        change(&mut case);
        case
    }
}

/// The requests to send for one operation, refusals first.
fn cases(spec: &Spec, o: &Operation) -> Result<Vec<Case>, String> {
    let params = spec.params(o);
    let body = spec.body(o);
    let succeeds = |name: &str| spec.status_of_example(o, name).is_none();

    let mut base = Case {
        label: "base".into(),
        values: BTreeMap::new(),
        body: None,
        credentials: Credentials::Bearer,
        signature: Signature::Valid,
        host: None,
        origin: None,
        expect: None,
    };
    // Parameter name → the name of the example the base request takes.
    let mut base_examples = BTreeMap::new();
    for p in &params {
        match p.examples.iter().find(|(name, _)| succeeds(name)) {
            Some((name, value)) => {
                base.values.insert(p.name.clone(), value.clone());
                base_examples.insert(&p.name, name);
            }
            // Twilio's bodySHA256 is computed from the body when sent.
            None if p.required && p.name != "bodySHA256" => {
                return Err(format!("required parameter {} has no example that succeeds", p.name));
            }
            None => {}
        }
    }
    let mut base_body = None;
    if let Some(b) = &body {
        base_body = b
            .media
            .iter()
            .flat_map(|m| m.examples.iter().map(move |(name, value)| (&m.name, name, value)))
            .find(|(_, name, _)| succeeds(name))
            .map(|(media, name, value)| (media.clone(), name.clone(), value.clone()));
        match &base_body {
            Some((media, _, value)) => base.body = Some(Body::from_example(media, value)?),
            None if b.required => return Err("the required body has no example that succeeds".into()),
            None => {}
        }
    }

    let mut out = vec![base.clone()];
    let optional = params.iter().any(|p| !p.required && base.values.contains_key(&p.name));
    if optional || body.as_ref().is_some_and(|b| !b.required && base.body.is_some()) {
        out.push(base.with("only what is required", None, |c| {
            c.values.retain(|name, _| params.iter().any(|p| p.required && p.name == *name));
            if body.as_ref().is_some_and(|b| !b.required) {
                c.body = None;
            }
        }));
    }
    for p in &params {
        for (name, value) in &p.examples {
            if base_examples.get(&p.name) == Some(&name) {
                continue;
            }
            let expect = spec.status_of_example(o, name);
            out.push(base.with(format!("{} example {name}", p.name), expect, |c| {
                c.values.insert(p.name.clone(), value.clone());
            }));
        }
    }
    if let Some(b) = &body {
        for Media { name: media, examples, .. } in &b.media {
            for (name, value) in examples {
                if base_body.as_ref().is_some_and(|(m, n, _)| m == media && n == name) {
                    continue;
                }
                let sent = Body::from_example(media, value)?;
                let expect = spec.status_of_example(o, name);
                out.push(base.with(format!("{media} body example {name}"), expect, |c| c.body = Some(sent)));
            }
        }
    }

    // The refusals the test provokes itself, by the names of the response
    // examples that document them.
    let base_media = base.body.as_ref().map_or("application/json".to_string(), |b| b.media.clone());
    for (status, response) in spec.responses(o) {
        let names: Vec<String> = response["content"]
            .as_object()
            .into_iter()
            .flat_map(|c| c.values())
            .filter_map(|m| m.get("examples").and_then(Value::as_object))
            .flat_map(|e| e.keys().cloned())
            .collect();
        for name in names {
            let expect = Some(status.clone());
            let label = format!("derived {name}");
            match name.as_str() {
                "unauthorized" => {
                    out.push(
                        base.with(format!("{label}: no token"), expect.clone(), |c| {
                            c.credentials = Credentials::Missing
                        }),
                    );
                    out.push(
                        base.with(format!("{label}: wrong token"), expect, |c| c.credentials = Credentials::Wrong),
                    );
                }
                "host_not_served" => out.push(base.with(label, expect, |c| c.host = Some("attacker.example"))),
                "cross_site" => out.push(base.with(label, expect, |c| c.origin = Some("https://evil.example"))),
                "unsigned" => out.push(base.with(label, expect, |c| c.signature = Signature::Missing)),
                "bad_signature" => out.push(base.with(label, expect, |c| c.signature = Signature::Wrong)),
                "malformed_json" => {
                    out.push(base.with(label, expect, |c| c.body = Some(Body::raw("application/json", b"[{".to_vec()))))
                }
                "unsupported_media_type" => {
                    out.push(base.with(label, expect, |c| c.body = Some(Body::raw("text/plain", b"hello".to_vec()))))
                }
                // One byte over: the server reads the whole body before it
                // refuses, so the client is never cut off mid-send.
                "payload_too_large" => {
                    let limit =
                        body.as_ref().and_then(|b| b.limit).ok_or("413 is documented without x-max-body-bytes")?;
                    out.push(base.with(label, expect, |c| c.body = Some(Body::raw(&base_media, vec![b' '; limit + 1]))))
                }
                _ => {}
            }
        }
    }
    // A token given as the password of Basic auth, as browsers send it; only
    // for reads, which may be repeated.
    if spec.needs_admin_token(o) && o.method == "get" {
        out.push(base.with("basic auth", None, |c| c.credentials = Credentials::Basic));
    }
    // Refusals first (a stable sort keeps the rest in order).
    out.sort_by_key(|c| c.expect.as_ref().is_none_or(|s| s.starts_with('2')));
    Ok(out)
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

async fn send(
    client: &reqwest::Client,
    base_url: &str,
    spec: &Spec,
    o: &Operation<'_>,
    case: &Case,
) -> Result<Answer, String> {
    let params = spec.params(o);
    let mut path = o.path.to_string();
    let mut query = form_urlencoded::Serializer::new(String::new());
    let mut headers = Vec::new();
    for p in &params {
        let value = match case.values.get(&p.name) {
            Some(v) => text(v),
            None if p.name == "bodySHA256" && p.location == "query" => {
                body_sha256(case.body.as_ref().map_or(&[][..], |b| &b.bytes))
            }
            None => continue,
        };
        match p.location.as_str() {
            "path" => path = path.replace(&format!("{{{}}}", p.name), &segment(&value)),
            "query" => {
                query.append_pair(&p.name, &value);
            }
            "header" => headers.push((p.name.clone(), value)),
            other => return Err(format!("parameters in {other} are not supported by this test")),
        }
    }
    let query = query.finish();
    let target = if query.is_empty() { path } else { format!("{path}?{query}") };
    let method = reqwest::Method::from_bytes(o.method.to_uppercase().as_bytes()).unwrap();
    let mut request = client.request(method, format!("{base_url}{target}"));
    for (name, value) in headers {
        request = request.header(name, value);
    }
    if spec.needs_admin_token(o) {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("flowcast:{ADMIN}"));
        request = match case.credentials {
            Credentials::Bearer => request.bearer_auth(ADMIN),
            Credentials::Basic => request.header("authorization", format!("Basic {basic}")),
            Credentials::Wrong => request.bearer_auth("not-the-token"),
            Credentials::Missing => request,
        };
    }
    if spec.twilio_signed(o) && case.signature != Signature::Missing {
        let fields = case.body.as_ref().map_or(&[][..], |b| &b.fields[..]);
        let signed = form_signing_string(&format!("{PUBLIC}{target}"), fields);
        let key = if case.signature == Signature::Valid { TOKEN } else { "not-the-auth-token" };
        request = request.header("x-twilio-signature", sign(key, &signed));
    }
    if let Some(host) = case.host {
        request = request.header("host", host);
    }
    if let Some(origin) = case.origin {
        request = request.header("origin", origin);
    }
    if let Some(body) = &case.body {
        request = request.header("content-type", &body.media).body(body.bytes.clone());
    }
    let response = request.send().await.map_err(|e| format!("the request failed: {e}"))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(|e| format!("the answer could not be read: {e}"))?.to_vec();
    Ok(Answer { status, headers, body })
}

fn shown(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.len() > 400 { format!("{}…", &text[..text.floor_char_boundary(400)]) } else { text.into_owned() }
}

fn essence(headers: &reqwest::header::HeaderMap) -> String {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Checks an answer against a documented response; what disagrees, if anything.
fn check_against(spec: &Spec, status: &str, response: &Value, answer: &Answer) -> Result<(), String> {
    for (name, header) in response.get("headers").and_then(Value::as_object).into_iter().flatten() {
        if spec.resolve(header)["required"] == true && !answer.headers.contains_key(name.as_str()) {
            return Err(format!("the {status} answer lacks the documented header {name}"));
        }
    }
    let content = response.get("content").and_then(Value::as_object).filter(|c| !c.is_empty());
    let Some(content) = content else {
        return if answer.body.is_empty() {
            Ok(())
        } else {
            Err(format!("{status} is documented without a body, but one came: {}", shown(&answer.body)))
        };
    };
    let media = essence(&answer.headers);
    let Some(documented) = content.get(&media) else {
        let listed: Vec<&String> = content.keys().collect();
        return Err(format!("content type {media:?} is not documented for {status} (documented: {listed:?})"));
    };
    let instance = if media.ends_with("json") {
        serde_json::from_slice(&answer.body)
            .map_err(|e| format!("the {status} body is not JSON ({e}): {}", shown(&answer.body)))?
    } else {
        Value::String(String::from_utf8_lossy(&answer.body).into_owned())
    };
    let schema = documented.get("schema").cloned().unwrap_or(json!({}));
    spec.check_schema(&schema, &instance)
        .map_err(|e| format!("the {status} body does not match its schema: {e}\nbody: {}", shown(&answer.body)))
}

/// Checks one answer to a case; what disagrees, if anything.
fn check(spec: &Spec, o: &Operation, case: &Case, answer: &Answer) -> Result<(), String> {
    let responses = spec.responses(o);
    let status = answer.status.to_string();
    let Some(response) = responses.get(&status) else {
        let listed: Vec<&String> = responses.keys().collect();
        return Err(format!(
            "answered {status}, which the document does not list (it lists {listed:?}); body: {}",
            shown(&answer.body)
        ));
    };
    match &case.expect {
        Some(expected) if *expected != status => {
            return Err(format!("answered {status}, the document says {expected}; body: {}", shown(&answer.body)));
        }
        None if !status.starts_with('2') => {
            return Err(format!("answered {status}, the document says a 2xx; body: {}", shown(&answer.body)));
        }
        _ => {}
    }
    check_against(spec, &status, response, answer)
}

/// A campaign serve never starts by itself: its schedule fires once a year.
const YEARLY: &str = "schedule = \"0 0 1 1 *\"";

/// The campaigns the document's examples name: `notices` (with outcomes and
/// an event to send), `later` (its contacts due in 2099, so its runs stay
/// active), `parcels` (fed over HTTP), `undeployed` (its flow never
/// deployed), and `broken.toml`, refused.
fn write_campaigns(app: &TestApp) {
    app.write("notices.csv", contacts_csv(&phones(2)));
    app.write(
        "notices.toml",
        format!(
            "kind = \"reminder\"\nflow = \"{FLOW}\"\nfrom = \"+15017122661\"\ncontacts = \"notices.csv\"\n{YEARLY}\n\
             notify = {{ url = \"http://127.0.0.1:9/hooks\", events = [\"run.finished\"] }}\n\
             [parameters]\nname = \"{{{{first_name}}}}\"\n[outcomes]\nname = \"flow.data.name\"\n"
        ),
    );
    app.write("later.csv", "phone,first_name,appointment_at\n+12015550160,Lin,2099-01-01 09:00\n");
    app.write(
        "later.toml",
        format!(
            "kind = \"reminder\"\nflow = \"{FLOW}\"\nfrom = \"+15017122661\"\ncontacts = \"later.csv\"\n{YEARLY}\n\
             send_at = \"{{{{appointment_at}}}} - 24h\"\n[parameters]\nname = \"{{{{first_name}}}}\"\n"
        ),
    );
    app.write(
        "parcels.toml",
        format!(
            "kind = \"delivery-notice\"\nflow = \"{FLOW}\"\nfrom = \"+15017122661\"\ntrigger = \"api\"\n\
             [parameters]\norder = \"{{{{order_id}}}}\"\n"
        ),
    );
    std::fs::write(app.flows.join("survey.json"), "{}").unwrap();
    app.write(
        "undeployed.toml",
        format!(
            "kind = \"survey\"\nflow = \"survey\"\nfrom = \"+15017122661\"\ncontacts = \"notices.csv\"\n{YEARLY}\n"
        ),
    );
    app.write("broken.toml", "kind = \"newsletter\"\n");
}

/// A client of the API with the admin token.
struct Admin {
    client: reqwest::Client,
    url: String,
}

impl Admin {
    async fn get(&self, path: &str) -> Value {
        let r = self.client.get(format!("{}{path}", self.url)).bearer_auth(ADMIN).send().await.unwrap();
        r.json().await.unwrap_or(Value::Null)
    }

    async fn post(&self, path: &str, key: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut r = self.client.post(format!("{}{path}", self.url)).bearer_auth(ADMIN);
        if let Some(key) = key {
            r = r.header("idempotency-key", key);
        }
        if let Some(body) = body {
            r = r.json(&body);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn run_state(&self, id: i64) -> String {
        self.get(&format!("/api/runs/{id}")).await["state"].as_str().unwrap_or_default().to_string()
    }
}

/// The state the examples refer to: run 1 of `notices` finished (its
/// outcomes read back, its `run.finished` event in the outbox), runs 2 and 3
/// of `later` active, `+12015550123` suppressed in scopes `all` and
/// `reminder`, and `+12015550125` in `all`.
async fn set_up(admin: &Admin, served: &Served) {
    let in_force = eventually(Duration::from_secs(10), async || {
        let campaigns = admin.get("/api/campaigns").await;
        campaigns["campaigns"].as_array().is_some_and(|c| c.len() == 5)
    })
    .await;
    assert!(in_force, "the campaigns are read: {}\n{}", admin.get("/api/campaigns").await, served.log());

    let (status, run) = admin.post("/api/campaigns/notices/runs", None, None).await;
    assert_eq!((status, run["id"].as_i64()), (201, Some(1)), "{run}");
    for (key, id) in [("setup-2", 2), ("setup-3", 3)] {
        let (status, run) = admin.post("/api/campaigns/later/runs", Some(key), None).await;
        assert_eq!((status, run["id"].as_i64()), (201, Some(id)), "{run}");
    }
    let settled = eventually(Duration::from_secs(20), async || {
        let jobs = admin.get("/api/runs/1/jobs").await;
        let known =
            jobs["jobs"].as_array().is_some_and(|j| j.len() == 2 && j.iter().all(|j| j["outcome_state"] == "known"));
        known
            && admin.run_state(1).await == "finished"
            && admin.run_state(2).await == "active"
            && admin.run_state(3).await == "active"
            && admin.get("/api/outbox").await["counts"]["pending"].as_i64() >= Some(1)
    })
    .await;
    assert!(settled, "run 1 finishes with its outcomes read back, runs 2 and 3 wait:\n{}", served.log());
    for (phone, scope) in [("+12015550123", "all"), ("+12015550123", "reminder"), ("+12015550125", "all")] {
        let (status, _) = admin.post("/api/suppressions", None, Some(json!({"phone": phone, "scope": scope}))).await;
        assert_eq!(status, 201, "{phone} in {scope}");
    }
}

#[tokio::test]
async fn every_operation_answers_as_the_document_says() {
    let spec = Spec::load();
    let sim = Simulator::start(SimConfig { lifetime: Some(Duration::ZERO), ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    write_campaigns(&app);
    let served = Served::start_with(
        &app,
        &sim.url(),
        &[("FLOWCAST_ADMIN_TOKEN", ADMIN), ("FLOWCAST_PUBLIC_URL", PUBLIC), ("FLOWCAST_OUTCOME_AFTER", "0s")],
    )
    .await;
    let client = reqwest::Client::new();
    let admin = Admin { client: client.clone(), url: served.url.clone() };
    set_up(&admin, &served).await;

    let mut problems = Vec::new();
    let mut concrete_paths = BTreeMap::new();
    for o in spec.operations() {
        let cases = match cases(&spec, &o) {
            Ok(cases) => cases,
            Err(e) => {
                problems.push(format!("{}: {e}", o.label()));
                continue;
            }
        };
        if let Some(base) = cases.iter().find(|c| c.label == "base") {
            concrete_paths.entry(o.path).or_insert_with(|| base.values.clone());
        }
        let mut answered = BTreeSet::new();
        for case in &cases {
            let outcome = match send(&client, &served.url, &spec, &o, case).await {
                Ok(answer) => {
                    answered.insert(answer.status.to_string());
                    check(&spec, &o, case, &answer)
                }
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                problems.push(format!("{} [{}]: {e}", o.label(), case.label));
            }
        }
        for status in spec.responses(&o).keys() {
            if !answered.contains(status) && !NEEDS_A_FAULT.contains(&status.as_str()) {
                problems.push(format!(
                    "{}: documents {status}, but none of its examples drew it (add a request example named like a {status} \
                     response example)",
                    o.label()
                ));
            }
        }
    }

    // A method a path does not document is refused in the error shape, and
    // `Allow` names exactly the documented ones.
    let error_schema = json!({"$ref": "#/components/schemas/Error"});
    for (path, values) in &concrete_paths {
        let mut concrete = path.to_string();
        for (name, value) in values {
            concrete = concrete.replace(&format!("{{{name}}}"), &segment(&text(value)));
        }
        let documented = spec.documented_methods(path);
        for method in PROBED_METHODS.iter().filter(|m| !documented.contains(**m)) {
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let answer =
                client.request(m, format!("{}{concrete}", served.url)).bearer_auth(ADMIN).send().await.unwrap();
            let status = answer.status().as_u16();
            let allow: BTreeSet<String> = answer
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .split(',')
                .map(|m| m.trim().to_ascii_uppercase())
                .filter(|m| !m.is_empty() && m != "HEAD")
                .collect();
            let body: Value = answer.json().await.unwrap_or(Value::Null);
            let label = format!("{method} {path} (not documented)");
            if status != 405 && status != 404 {
                problems.push(format!("{label}: answered {status}, not 405 or 404: {body}"));
            }
            if status == 405 && allow != documented {
                problems.push(format!("{label}: Allow says {allow:?}, the document {documented:?}"));
            }
            if let Err(e) = spec.check_schema(&error_schema, &body) {
                problems.push(format!("{label}: not the error shape: {e}; body: {body}"));
            }
        }
    }
    let unknown = client.get(format!("{}/api/no-such-endpoint", served.url)).bearer_auth(ADMIN).send().await.unwrap();
    let status = unknown.status().as_u16();
    let body: Value = unknown.json().await.unwrap_or(Value::Null);
    if status != 404 || spec.check_schema(&error_schema, &body).is_err() {
        problems.push(format!("GET /api/no-such-endpoint: answered {status} {body}, not 404 in the error shape"));
    }

    // What is served is this very document.
    let served_doc = client.get(format!("{}/api/openapi.json", served.url)).bearer_auth(ADMIN).send().await.unwrap();
    let served_doc: Value = served_doc.json().await.unwrap_or(Value::Null);
    if served_doc != spec.doc {
        problems.push("GET /api/openapi.json: not the document in src/service/openapi.json".into());
    }

    served.terminate().await;
    assert!(problems.is_empty(), "the server and src/service/openapi.json disagree:\n{}", problems.join("\n\n"));
}

/// Every `$ref` in `value`, with where it is (a JSON pointer).
fn refs<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push((at.clone(), r)),
                    _ => refs(v, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out),
                }
            }
        }
        Value::Array(list) => {
            for (i, v) in list.iter().enumerate() {
                refs(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_document_is_openapi_3_1_and_its_examples_match_its_schemas() {
    let spec = Spec::load();
    let doc = &spec.doc;
    let mut problems = Vec::new();
    if !doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")) {
        problems.push(format!("openapi is {}, not 3.1.x", doc["openapi"]));
    }
    if !doc["info"]["title"].is_string() {
        problems.push("info.title is missing".into());
    }
    if doc["info"]["version"] != env!("CARGO_PKG_VERSION") {
        problems.push(format!(
            "info.version is {}, the crate is {}",
            doc["info"]["version"],
            env!("CARGO_PKG_VERSION")
        ));
    }
    let mut all = Vec::new();
    refs(doc, String::new(), &mut all);
    for (at, reference) in all {
        if spec.pointer(reference).is_none() {
            problems.push(format!("{at}: $ref {reference} does not resolve"));
        }
    }
    for (name, schema) in doc["components"]["schemas"].as_object().expect("components/schemas") {
        if let Err(e) = spec.compile(schema) {
            problems.push(format!("components/schemas/{name}: {e}"));
        }
    }
    for (name, scheme) in doc["components"]["securitySchemes"].as_object().expect("securitySchemes") {
        if !["http", "apiKey"].contains(&scheme["type"].as_str().unwrap_or("")) {
            problems.push(format!("security scheme {name}: type {} is not one this test can use", scheme["type"]));
        }
    }

    let mut operation_ids = BTreeSet::new();
    for o in spec.operations() {
        let label = o.label();
        match o.op["operationId"].as_str() {
            Some(id) if !operation_ids.insert(id.to_string()) => {
                problems.push(format!("{label}: operationId {id} twice"))
            }
            Some(_) => {}
            None => problems.push(format!("{label}: no operationId")),
        }
        for requirement in o.op.get("security").unwrap_or(&doc["security"]).as_array().into_iter().flatten() {
            for name in requirement.as_object().into_iter().flat_map(|r| r.keys()) {
                if doc["components"]["securitySchemes"].get(name).is_none() {
                    problems.push(format!("{label}: security scheme {name} is not defined"));
                }
            }
        }
        let responses = spec.responses(&o);
        if responses.is_empty() {
            problems.push(format!("{label}: no responses"));
        }
        let mut example_names: BTreeMap<String, String> = BTreeMap::new();
        for (status, response) in &responses {
            let valid_status = status.len() == 3
                && status.chars().all(|c| c.is_ascii_digit())
                && ('1'..='5').contains(&status.chars().next().unwrap());
            if !valid_status {
                problems.push(format!("{label}: response key {status} is not an HTTP status"));
            }
            if !response["description"].is_string() {
                problems.push(format!("{label} {status}: no description"));
            }
            for (media, content) in response.get("content").and_then(Value::as_object).into_iter().flatten() {
                let schema = content.get("schema").cloned().unwrap_or(json!({}));
                for (name, value) in named_examples(content) {
                    if let Some(other) = example_names.insert(name.clone(), status.clone())
                        && other != *status
                    {
                        problems.push(format!("{label}: example {name} is under both {other} and {status}"));
                    }
                    if let Err(e) = spec.check_schema(&schema, &value) {
                        problems.push(format!("{label} {status} {media} example {name}: {e}"));
                    }
                }
            }
        }
        // Every `{name}` in the path is a required path parameter, and back.
        let params = spec.params(&o);
        let templated: BTreeSet<&str> = o.path.split('{').skip(1).filter_map(|rest| rest.split('}').next()).collect();
        let declared: BTreeSet<&str> =
            params.iter().filter(|p| p.location == "path").map(|p| p.name.as_str()).collect();
        if templated != declared {
            problems.push(format!("{label}: path parameters {declared:?}, the path has {templated:?}"));
        }
        for p in &params {
            if p.location == "path" && !p.required {
                problems.push(format!("{label}: path parameter {} must be required", p.name));
            }
            for (name, value) in &p.examples {
                if spec.status_of_example(&o, name).is_none()
                    && let Err(e) = spec.check_schema(&p.schema, value)
                {
                    problems
                        .push(format!("{label}: parameter {} example {name} is expected to succeed but {e}", p.name));
                }
            }
        }
        if let Some(body) = spec.body(&o) {
            for Media { name: media, schema, examples } in &body.media {
                for (name, value) in examples {
                    if spec.status_of_example(&o, name).is_none()
                        && let Err(e) = spec.check_schema(schema, value)
                    {
                        problems.push(format!("{label}: {media} body example {name} is expected to succeed but {e}"));
                    }
                }
            }
        }
        if let Err(e) = cases(&spec, &o) {
            problems.push(format!("{label}: {e}"));
        }
    }
    assert!(problems.is_empty(), "src/service/openapi.json:\n{}", problems.join("\n"));
}
