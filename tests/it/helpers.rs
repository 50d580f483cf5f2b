//! A test app: a temp folder with campaigns/, flows/ and a ledger, and helpers to
//! write campaigns, start runs, dispatch them, and run the `flowcast` binary.

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use flowcast::campaign::{Campaign, Folders, load_one};
use flowcast::dispatch::{DispatchSettings, Dispatcher, RateLimits, RunEnd};
use flowcast::domain::{FlowSid, JobState, Trigger};
use flowcast::runs::{import_run, new_run};
use flowcast::schedule::SystemClock;
use flowcast::store::{JobRow, Store};
use flowcast::studio::{Credentials, HttpStudio, StudioApi, StudioConfig};

pub const FLOW: &str = "FW0123456789abcdef0123456789abcdef";
pub const ACCOUNT: &str = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub const TOKEN: &str = "test-token-not-a-secret";

pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub campaigns: PathBuf,
    pub flows: PathBuf,
    /// The SQLite file, when the ledger is one.
    pub db: PathBuf,
    /// The ledger's address as `--db` takes it: `db`, or a PostgreSQL schema of
    /// this test's own when `FLOWCAST_TEST_BACKEND=postgres`.
    pub ledger: String,
}

/// Whether this test run puts every ledger in PostgreSQL
/// (`FLOWCAST_TEST_BACKEND=postgres`, with `FLOWCAST_TEST_POSTGRES` the server).
pub fn on_postgres() -> bool {
    std::env::var("FLOWCAST_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// A fresh PostgreSQL ledger for one test, made on a thread of its own so that
/// it works from sync and async code alike.
fn postgres_ledger() -> String {
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(flowcast::store::postgres::test_ledger("TestApp"))
    })
    .join()
    .unwrap()
    .expect("FLOWCAST_TEST_BACKEND=postgres needs FLOWCAST_TEST_POSTGRES")
}

impl TestApp {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let campaigns = dir.path().join("campaigns");
        let flows = dir.path().join("flows");
        std::fs::create_dir_all(&campaigns).unwrap();
        std::fs::create_dir_all(&flows).unwrap();
        let db = dir.path().join("flowcast.db");
        let ledger = if on_postgres() { postgres_ledger() } else { db.to_str().unwrap().to_string() };
        TestApp { dir, campaigns, flows, db, ledger }
    }

    /// Writes a file under campaigns/.
    pub fn write(&self, rel: &str, text: impl AsRef<[u8]>) -> PathBuf {
        let path = self.campaigns.join(rel);
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn folders(&self) -> Folders {
        Folders { campaigns: self.campaigns.clone(), flows: self.flows.clone() }
    }

    pub async fn store(&self) -> Store {
        let ledger = flowcast::store::Ledger::parse(&self.ledger).expect("a ledger address");
        Store::open(&ledger).await.expect("the ledger opens")
    }

    /// Every job of a run, in id order.
    pub async fn jobs(&self, run: i64) -> Vec<JobRow> {
        let store = self.store().await;
        let mut all = Vec::new();
        loop {
            let after = all.last().map_or(0, |j: &JobRow| j.id);
            let page = store.jobs_page(run, None, after, 1000).await.unwrap();
            let done = page.len() < 1000;
            all.extend(page);
            if done {
                return all;
            }
        }
    }

    pub fn campaign(&self, file: &str) -> Campaign {
        load_one(&self.campaigns.join(file), &self.folders()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Creates and imports a run of the campaign in `file`; returns its id.
    pub async fn start_run(&self, file: &str) -> i64 {
        self.start_run_at(file, chrono::Utc::now()).await
    }

    /// As [`start_run`](Self::start_run), as if it were `now`.
    pub async fn start_run_at(&self, file: &str, now: chrono::DateTime<chrono::Utc>) -> i64 {
        let campaign = self.campaign(file);
        let store = self.store().await;
        let flow = match &campaign.flow {
            flowcast::campaign::FlowRef::Sid(s) => s.clone(),
            _ => FlowSid::parse(FLOW).unwrap(),
        };
        let run = new_run(
            &campaign,
            &flow,
            Trigger::Manual,
            format!("test:{}", now.timestamp_nanos_opt().unwrap()),
            now.timestamp_millis(),
        );
        let id = store.create_run(run, now.timestamp_millis()).await.unwrap().expect("a new run");
        import_run(&store, &campaign, id, now.timestamp_millis(), async |_| {}).await.unwrap();
        id
    }

    /// Dispatches a run to its end against `studio`.
    pub async fn dispatch_with<S: StudioApi>(&self, run_id: i64, studio: S, account_rate: u32) -> RunEnd {
        self.dispatch_with_settings(run_id, studio, account_rate, fast_settings()).await
    }

    /// As [`dispatch_with`](Self::dispatch_with), with these settings.
    pub async fn dispatch_with_settings<S: StudioApi>(
        &self,
        run_id: i64,
        studio: S,
        account_rate: u32,
        settings: DispatchSettings,
    ) -> RunEnd {
        let dispatcher = Dispatcher::new(
            self.store().await,
            Arc::new(studio),
            Arc::new(SystemClock),
            settings,
            Arc::new(RateLimits::new(account_rate)),
        );
        tokio::time::timeout(Duration::from_secs(60), dispatcher.run_to_end(run_id))
            .await
            .expect("the run ends within a minute")
            .expect("dispatch works")
    }

    /// A dispatcher for the Studio at `url` on a clock the test controls.
    pub async fn dispatcher_on(&self, url: &str, clock: Arc<dyn flowcast::schedule::Clock>) -> Dispatcher<HttpStudio> {
        Dispatcher::new(
            self.store().await,
            Arc::new(http_studio(url)),
            clock,
            fast_settings(),
            Arc::new(RateLimits::new(1000)),
        )
    }

    /// Dispatches a run to its end against the Studio at `url`.
    pub async fn dispatch(&self, run_id: i64, url: &str) -> RunEnd {
        self.dispatch_with(run_id, http_studio(url), 1000).await
    }

    /// Starts the `flowcast` binary in the app's folder with a clean environment.
    pub fn spawn_flowcast(&self, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Child {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowcast"));
        cmd.current_dir(self.dir.path())
            .args(["--db", &self.ledger, "--campaigns", self.campaigns.to_str().unwrap()])
            .args(["--flows", self.flows.to_str().unwrap()])
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        for (k, _) in std::env::vars() {
            if k.starts_with("FLOWCAST_") || k.starts_with("TWILIO_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied());
        cmd.spawn().expect("flowcast starts")
    }

    /// Runs the `flowcast` binary in the app's folder with a clean environment.
    pub async fn flowcast(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowcast"));
        cmd.current_dir(self.dir.path())
            .args([
                "--db",
                &self.ledger,
                "--campaigns",
                self.campaigns.to_str().unwrap(),
                "--flows",
                self.flows.to_str().unwrap(),
            ])
            .args(args)
            .env_remove("RUST_LOG");
        for (k, _) in std::env::vars() {
            if k.starts_with("FLOWCAST_") || k.starts_with("TWILIO_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied());
        tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .expect("flowcast finishes within two minutes")
            .expect("flowcast runs")
    }
}

/// Retry and poll delays short enough for tests (the logic is the same).
pub fn fast_settings() -> DispatchSettings {
    DispatchSettings {
        concurrency: 16,
        max_failures: 4,
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(50),
        throttle_delay: Duration::from_millis(50),
        wait_poll: Duration::from_millis(50),
        idle_poll: Duration::from_millis(20),
        max_end_rounds: 3,
        shutdown_grace: Duration::from_secs(5),
        ambiguous_settle: Duration::from_millis(50),
        breaker_streak: 50,
        outcome_after: Duration::from_secs(300),
        ..DispatchSettings::default()
    }
}

pub fn http_studio(url: &str) -> HttpStudio {
    HttpStudio::new(StudioConfig {
        base_url: url.to_string(),
        credentials: Credentials::new(ACCOUNT, TOKEN),
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
    })
    .unwrap()
}

/// `n` distinct valid US numbers in E.164.
pub fn phones(n: usize) -> Vec<String> {
    // Ten thousand numbers per area code, the first ten thousand in 201.
    const AREAS: [u32; 10] = [201, 202, 203, 205, 206, 207, 208, 209, 210, 212];
    assert!(n <= AREAS.len() * 10_000);
    (0..n).map(|i| format!("+1{}555{:04}", AREAS[i / 10_000], i % 10_000)).collect()
}

/// A CSV with a `phone,first_name` header and one row per phone.
pub fn contacts_csv(phones: &[String]) -> String {
    let mut csv = String::from("phone,first_name\n");
    for (i, p) in phones.iter().enumerate() {
        csv.push_str(&format!("{p},Name{i}\n"));
    }
    csv
}

/// A minimal valid campaign file body; `extra` lines are appended before
/// `[parameters]`.
pub fn campaign_toml(contacts: &str, extra: &str) -> String {
    format!(
        "kind = \"reminder\"\nflow = \"{FLOW}\"\nfrom = \"+15017122661\"\ncontacts = \"{contacts}\"\n{extra}\n[parameters]\nname = \"{{{{first_name}}}}\"\nclinic = \"Main St\"\n"
    )
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The seed for a randomised test: `FLOWCAST_TEST_SEED` to replay one, else
/// fresh. Printed, so a failure's output says how to replay it.
pub fn seed(test: &str) -> u64 {
    let seed =
        std::env::var("FLOWCAST_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed} (replay with FLOWCAST_TEST_SEED={seed})");
    seed
}

/// Asserts the simulator's own record holds exactly one Execution per phone in
/// `valid` and none for anyone else, and that every job of the run is `sent`
/// with the SID the simulator gave that contact.
pub async fn assert_exactly_once(
    app: &TestApp,
    run: i64,
    sim: &flowcast::studio::simulator::Simulator,
    valid: &[String],
) {
    use std::collections::HashMap;
    let mut by_phone: HashMap<String, Vec<String>> = HashMap::new();
    for e in sim.executions() {
        by_phone.entry(e.to.clone()).or_default().push(e.sid.clone());
    }
    let twice: Vec<_> = by_phone.iter().filter(|(_, sids)| sids.len() > 1).collect();
    assert!(twice.is_empty(), "contacts with more than one Execution: {twice:?}");
    let mut expected: Vec<&String> = valid.iter().collect();
    expected.sort();
    let mut got: Vec<&String> = by_phone.keys().collect();
    got.sort();
    assert_eq!(got, expected, "exactly the valid contacts got an Execution");
    let jobs = app.jobs(run).await;
    for j in &jobs {
        assert_eq!(j.state, JobState::Sent, "{j:?}");
        assert_eq!(
            j.execution_sid.as_deref(),
            Some(by_phone[j.phone.as_str()][0].as_str()),
            "the ledger's SID is Studio's: {j:?}"
        );
    }
    assert_eq!(jobs.len(), valid.len());
}

/// Runs a read-only query on the app's ledger, whichever database keeps it,
/// for tests that look at columns no report shows. Integers, text, flags and
/// NULLs come back as JSON values, row by row. (The SQL must be the same in
/// both: plain SELECTs are.)
pub fn ledger_rows(app: &TestApp, sql: &str) -> Vec<Vec<serde_json::Value>> {
    use serde_json::Value;
    if !on_postgres() && !app.ledger.starts_with("postgres") {
        let conn = rusqlite::Connection::open_with_flags(&app.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut stmt = conn.prepare(sql).unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| {
                        Ok(match r.get_ref(i)? {
                            rusqlite::types::ValueRef::Null => Value::Null,
                            rusqlite::types::ValueRef::Integer(v) => Value::from(v),
                            rusqlite::types::ValueRef::Real(v) => Value::from(v),
                            rusqlite::types::ValueRef::Text(t) => Value::from(String::from_utf8_lossy(t).into_owned()),
                            rusqlite::types::ValueRef::Blob(_) => Value::Null,
                        })
                    })
                    .collect::<rusqlite::Result<Vec<Value>>>()
            })
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap();
        return rows;
    }
    let (url, sql) = (app.ledger.clone(), sql.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            let rows = client.query(&sql, &[]).await.unwrap();
            rows.iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| match *r.columns()[i].type_() {
                            tokio_postgres::types::Type::INT8 => {
                                r.get::<_, Option<i64>>(i).map_or(Value::Null, Value::from)
                            }
                            tokio_postgres::types::Type::INT4 => {
                                r.get::<_, Option<i32>>(i).map_or(Value::Null, Value::from)
                            }
                            tokio_postgres::types::Type::INT2 => {
                                r.get::<_, Option<i16>>(i).map_or(Value::Null, Value::from)
                            }
                            tokio_postgres::types::Type::BOOL => {
                                r.get::<_, Option<bool>>(i).map_or(Value::Null, Value::from)
                            }
                            _ => r.get::<_, Option<String>>(i).map_or(Value::Null, Value::from),
                        })
                        .collect()
                })
                .collect()
        })
    })
    .join()
    .unwrap()
}

/// Runs `sql`, a write, on the app's ledger (as a damaged or an older
/// ledger would have it).
pub fn ledger_write(app: &TestApp, sql: &str) {
    if !on_postgres() && !app.ledger.starts_with("postgres") {
        rusqlite::Connection::open(&app.db).unwrap().execute_batch(sql).unwrap();
        return;
    }
    ledger_rows(app, sql);
}

/// Makes the ledger refuse, with an error, every write to `jobs` that
/// `event` names (`INSERT`, `UPDATE OF state`) and `when` matches (a
/// condition on `NEW`), on either backend, as trigger `name`.
pub fn inject_job_fault(app: &TestApp, name: &str, event: &str, when: &str) {
    if on_postgres() {
        ledger_write(
            app,
            &format!(
                "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql \
                 AS $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$"
            ),
        );
        ledger_write(
            app,
            &format!(
                "CREATE TRIGGER {name} BEFORE {event} ON jobs FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION {name}()"
            ),
        );
    } else {
        ledger_write(
            app,
            &format!(
                "CREATE TRIGGER {name} BEFORE {event} ON jobs WHEN {when} \
                 BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
            ),
        );
    }
}

/// Removes the fault [`inject_job_fault`] installed as `name`.
pub fn drop_job_fault(app: &TestApp, name: &str) {
    ledger_write(
        app,
        &if on_postgres() { format!("DROP TRIGGER {name} ON jobs") } else { format!("DROP TRIGGER {name}") },
    );
}

/// A job's Parameters as the ledger keeps them, made an object again: on
/// SQLite a job whose keys are its run's stores its values alone, the keys
/// kept once on the run (`runs.parameter_keys`).
pub fn stored_parameters(app: &TestApp, job: i64) -> serde_json::Value {
    use serde_json::Value;
    let sql = if !on_postgres() && !app.ledger.starts_with("postgres") {
        format!("SELECT j.parameters, r.parameter_keys FROM jobs j JOIN runs r ON r.id = j.run_id WHERE j.id = {job}")
    } else {
        format!("SELECT parameters, NULL::text FROM jobs WHERE id = {job}")
    };
    let row = ledger_rows(app, &sql).remove(0);
    let stored: Value = serde_json::from_str(row[0].as_str().unwrap()).unwrap();
    match (stored, &row[1]) {
        (Value::Array(values), Value::String(keys)) => {
            let keys: Vec<String> = serde_json::from_str(keys).unwrap();
            assert_eq!(keys.len(), values.len(), "job {job}: {keys:?} {values:?}");
            Value::Object(keys.into_iter().zip(values).collect())
        }
        (object, _) => object,
    }
}
