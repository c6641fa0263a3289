//! Secure connections end to end, on loopback with real servers started here:
//!
//! - Kafka over TLS with SASL/SCRAM-SHA-256: tansu (which authenticates SCRAM users but does
//!   not terminate TLS itself in 0.6) behind haproxy, which terminates TLS with a certificate
//!   of a CA made by openssl for this test; the broker advertises haproxy's address, so every
//!   connection goes through TLS;
//! - ClickHouse over HTTPS only, with a certificate of the same CA.
//!
//! `stockflow produce` and `stockflow run` reach both with `kafka.security_protocol =
//! "sasl_ssl"`, the CA in `kafka.tls.ca_file` and `clickhouse.ca_file`, the SASL password from
//! the environment; a wrong password, a CA that is not the broker's and a ClickHouse client
//! without the CA are refused with what went wrong.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Processes this test started, ended when it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        // The last started first: stockflow before the servers it talks to.
        for c in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, what: &str) {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("starts");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CA and a server certificate for localhost and 127.0.0.1, by openssl.
fn certificates(dir: &Path) {
    let ssl = |args: &[&str]| {
        run_ok(Command::new("openssl").current_dir(dir).args(args));
    };
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=stockflow test CA",
    ]);
    ssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    ssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let both = [
        std::fs::read(dir.join("server.pem")).unwrap(),
        std::fs::read(dir.join("server.key")).unwrap(),
    ]
    .concat();
    std::fs::write(dir.join("server-and-key.pem"), both).unwrap();
}

fn tansu_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TANSU_BIN") {
        return bin.into();
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    home.join("bin/tansu")
}

fn tansu(dir: &Path, port: u16, advertised: u16, authentication: bool) -> Child {
    let mut cmd = Command::new(tansu_bin());
    cmd.current_dir(dir).args([
        "broker",
        "--listener-url",
        &format!("tcp://127.0.0.1:{port}"),
        "--advertised-listener-url",
        &format!("tcp://127.0.0.1:{advertised}"),
        "--storage-engine",
        "sqlite://tansu.db",
    ]);
    if authentication {
        cmd.arg("--authentication");
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu starts (scripts/services.sh installs it)");
    wait_port(port, "tansu");
    child
}

/// Kafka with SCRAM users behind TLS: (processes, TLS port).
fn secure_kafka(dir: &Path, procs: &mut Procs) -> u16 {
    let (inner, outer) = (free_port(), free_port());
    // The user is created while the broker still accepts anyone, then it restarts requiring
    // authentication (tansu keeps users in its storage).
    let mut open = tansu(dir, inner, outer, false);
    run_ok(Command::new(tansu_bin()).args([
        "user",
        "create",
        "--broker",
        &format!("tcp://127.0.0.1:{inner}"),
        "--mechanism",
        "scram256",
        "stockflow",
        "s3cret-pass",
    ]));
    let _ = open.kill();
    let _ = open.wait();
    procs.0.push(tansu(dir, inner, outer, true));
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\
             frontend kafka_tls\n  bind 127.0.0.1:{outer} ssl crt {}\n  default_backend tansu\n\
             backend tansu\n  server tansu 127.0.0.1:{inner}\n",
            dir.join("server-and-key.pem").display()
        ),
    )
    .unwrap();
    procs.0.push(
        Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts (scripts/services.sh installs it)"),
    );
    wait_port(outer, "haproxy");
    outer
}

/// ClickHouse serving HTTPS only: its port.
fn secure_clickhouse(dir: &Path, procs: &mut Procs) -> u16 {
    let (https, tcp) = (free_port(), free_port());
    let ch = dir.join("clickhouse");
    std::fs::create_dir_all(&ch).unwrap();
    let d = dir.display();
    std::fs::write(
        ch.join("users.xml"),
        r#"<?xml version="1.0"?>
<yandex>
    <profiles><default></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip></networks>
        <profile>default</profile><quota>default</quota></default></users>
    <quotas><default></default></quotas>
</yandex>
"#,
    )
    .unwrap();
    std::fs::write(
        ch.join("config.xml"),
        format!(
            r#"<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{d}/clickhouse/server.log</log><errorlog>{d}/clickhouse/server.err.log</errorlog></logger>
    <https_port>{https}</https_port>
    <tcp_port>{tcp}</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <openSSL><server>
        <certificateFile>{d}/server.pem</certificateFile>
        <privateKeyFile>{d}/server.key</privateKeyFile>
        <verificationMode>none</verificationMode>
        <loadDefaultCAFile>false</loadDefaultCAFile>
        <disableProtocols>sslv2,sslv3</disableProtocols>
    </server></openSSL>
    <mark_cache_size>67108864</mark_cache_size>
    <path>{d}/clickhouse/data/</path>
    <tmp_path>{d}/clickhouse/tmp/</tmp_path>
    <users_config>{d}/clickhouse/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
</yandex>
"#
        ),
    )
    .unwrap();
    procs.0.push(
        Command::new("clickhouse-server")
            .arg(format!("--config-file={}", ch.join("config.xml").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("clickhouse-server starts (scripts/services.sh installs it)"),
    );
    wait_port(https, "ClickHouse");
    https
}

/// The body over HTTPS trusting `ca` (an error's body too: the tables appear only once the
/// sink first writes).
fn curl_https(ca: &Path, url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(ca)
        .arg(url)
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stockflow(config: &Path, password: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("STOCKFLOW_KAFKA__SASL__PASSWORD", password)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

#[test]
fn kafka_over_tls_with_scram_and_clickhouse_over_https() {
    let dir = std::env::temp_dir().join(format!("stockflow-secure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let ca = dir.join("ca.pem");
    let mut procs = Procs(Vec::new());
    let kafka = secure_kafka(&dir, &mut procs);
    let https = secure_clickhouse(&dir, &mut procs);
    let config = dir.join("secure.toml");
    std::fs::write(
        &config,
        format!(
            r#"[source]
kind = "kafka"
[kafka]
brokers = "127.0.0.1:{kafka}"
security_protocol = "sasl_ssl"
[kafka.tls]
ca_file = "{ca}"
[kafka.sasl]
mechanism = "SCRAM-SHA-256"
username = "stockflow"
[clickhouse]
enabled = true
url = "https://localhost:{https}"
ca_file = "{ca}"
database = "secure_test"
flush_interval = "100ms"
[http]
listen = "127.0.0.1:0"
[checkpoint]
dir = "{dir}/checkpoints"
"#,
            ca = ca.display(),
            dir = dir.display()
        ),
    )
    .unwrap();
    let events = dir.join("events.jsonl");
    std::fs::write(
        &events,
        concat!(
            r#"{"event_id":"s1","type":"received","sku":"secure-sku","location":"L1","qty":7,"ts":"2026-12-02T10:00:00Z"}"#,
            "\n",
            r#"{"event_id":"s2","type":"sold","sku":"secure-sku","location":"L1","qty":2,"ts":"2026-12-02T10:00:01Z"}"#,
            "\n"
        ),
    )
    .unwrap();

    // Refused, with the reason: a wrong password, then a CA that did not sign the broker's
    // certificate (the system's roots).
    let ev = events.to_str().unwrap();
    let out = stockflow(&config, "wrong", &["produce", "--input-file", ev]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("SASL authentication"),
        "{err}"
    );
    assert!(!err.contains("s3cret-pass"), "{err}");
    let system_roots = "kafka.tls.ca_file=\"/etc/ssl/certs/ca-certificates.crt\"";
    let out = stockflow(
        &config,
        "s3cret-pass",
        &["--set", system_roots, "produce", "--input-file", ev],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("certificate verify failed"),
        "{err}"
    );

    // Accepted: produce, then run; the answer shows over HTTP and in ClickHouse over HTTPS.
    let out = stockflow(&config, "s3cret-pass", &["produce", "--input-file", ev]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (child, base) = {
        std::env::set_var("STOCKFLOW_KAFKA__SASL__PASSWORD", "s3cret-pass");
        support::start_serving(["--config", config.to_str().unwrap(), "run"])
    };
    procs.0.push(child);
    let t0 = Instant::now();
    loop {
        let stock = ureq::get(&format!("{base}/v1/stock/secure-sku"))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok());
        let rows = curl_https(
            &ca,
            &format!(
                "https://localhost:{https}/?query=SELECT%20on_hand%20FROM%20secure_test.stock_levels%20FINAL%20WHERE%20deleted%20%3D%200"
            ),
        );
        if stock
            .as_deref()
            .is_some_and(|s| s.contains(r#""on_hand":5"#))
            && rows.trim() == "5"
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "not seen: HTTP {stock:?}, ClickHouse {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The sink's client refuses the server without the CA, and says why.
    let mut cfg = stockflow_types::config::ClickHouseConfig {
        url: format!("https://localhost:{https}"),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let query = |cfg: &stockflow_types::config::ClickHouseConfig| {
        let client = stockflow_sinks::clickhouse::client(cfg).unwrap();
        rt.block_on(client.query("SELECT 1").fetch_all::<u8>())
    };
    let err = query(&cfg).unwrap_err();
    let mut chain = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(c) = cause {
        chain.push_str(&format!(": {c}"));
        cause = c.source();
    }
    assert!(chain.contains("certificate"), "{chain}");
    cfg.ca_file = Some(ca);
    assert_eq!(query(&cfg).unwrap(), vec![1]);
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}
