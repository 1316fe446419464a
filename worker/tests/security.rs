//! Security on a shared network: the internal port accepts only a coordinator with the
//! shared secret; the public port speaks TLS and wants a bearer token for `tidemark.v1`
//! (health stays open for probes); both processes expose Prometheus metrics.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tidemark_coordinator::cluster::Cluster;
use tidemark_coordinator::config::ServeOptions;
use tidemark_proto::auth::{BearerToken, TokenCheck};
use tidemark_proto::v1::tidemark_client::TidemarkClient;
use tidemark_proto::v1::QueryRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use common::{free_ports, Children, Scratch};

/// A certificate authority and a `localhost` certificate it signed: (CA PEM, cert PEM, key PEM).
fn certificates() -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("a key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("a CA certificate");
    let key = KeyPair::generate().expect("a key");
    let cert = CertificateParams::new(vec!["localhost".to_owned()]).expect("params").signed_by(&key, &Issuer::new(ca_params, ca_key)).expect("signed");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// `GET /metrics` over plain HTTP/1.0.
fn scrape(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the metrics port answers");
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("request sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("a response");
    assert!(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

#[test]
fn secrets_tokens_tls_and_metrics() {
    let ports = free_ports(4);
    let (grpc, timely, worker_metrics, coordinator_metrics) = (ports[0], ports[1], ports[2], ports[3]);
    let data = common::Scratch::new("security");
    let _worker = Children(vec![Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["worker", "-w", "2", "--listen", &format!("127.0.0.1:{grpc}"), "--peers", &format!("127.0.0.1:{timely}")])
        .arg("--data-dir")
        .arg(&data.0)
        .args(["--metrics-listen", &format!("127.0.0.1:{worker_metrics}")])
        .env("TIDEMARK_INTERNAL_SECRET", "internal-s3cret")
        .stdout(Stdio::null())
        .spawn()
        .expect("the tidemark binary starts")]);
    let scratch = Scratch::new("security");
    let (ca, cert, key) = certificates();
    std::fs::write(scratch.path("ca.pem"), &ca).expect("writable");

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let address = runtime.block_on(async {
        let workers = vec![format!("127.0.0.1:{grpc}")];
        // The internal port refuses a coordinator without the secret, or with another.
        for wrong in [None, Some("guess".to_owned())] {
            let err = Cluster::connect(workers.clone(), Duration::from_secs(60), wrong).await.err().expect("refused");
            assert!(format!("{err:#}").contains("Unauthenticated"), "{err:#}");
        }
        let cluster = Cluster::connect(workers, Duration::from_secs(60), Some("internal-s3cret".to_owned())).await.expect("admitted");

        let options = ServeOptions { tokens: TokenCheck::new(["t0ken", "other"]), tls: Some(Identity::from_pem(cert, key)), ..ServeOptions::default() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let address = listener.local_addr().expect("bound");
        let metrics = tokio::net::TcpListener::bind(("127.0.0.1", coordinator_metrics)).await.expect("the metrics port");
        tokio::spawn(tidemark_coordinator::run(listener, Some(metrics), cluster, options, std::future::pending()));

        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca)).domain_name("localhost");
        let channel = Channel::from_shared(format!("https://{address}")).expect("a URL").tls_config(tls).expect("TLS").connect().await.expect("a TLS connection");
        let query = || QueryRequest { view: "kpis".into(), ..Default::default() };
        for token in [None, Some("t0ke"), Some("t0ken ")] {
            let mut client = TidemarkClient::with_interceptor(channel.clone(), BearerToken::new(token).expect("ascii"));
            let err = client.query(query()).await.expect_err("no valid token");
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{token:?}: {err}");
        }
        let mut client = TidemarkClient::with_interceptor(channel.clone(), BearerToken::new(Some("t0ken")).expect("ascii"));
        client.query(query()).await.expect("a valid token over TLS");

        // Health needs no token (Kubernetes probes).
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let answer = health.check(tonic_health::pb::HealthCheckRequest { service: "tidemark.v1.Tidemark".into() }).await.expect("health");
        assert_eq!(answer.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

        // Plaintext to the TLS port does not get an answer.
        let plain = TidemarkClient::connect(format!("http://{address}")).await;
        if let Ok(mut plain) = plain {
            assert!(plain.query(query()).await.is_err(), "plaintext is refused");
        }
        address
    });

    // The command-line client with TLS and a token.
    let output = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["query", "kpis", "--format", "csv", "--target", &format!("https://{address}"), "--tls-domain", "localhost"])
        .arg("--ca-cert")
        .arg(scratch.path("ca.pem"))
        .env("TIDEMARK_TOKEN", "other")
        .output()
        .expect("the client runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("granularity,window_start,"));
    let output = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["status", "--target", &format!("https://{address}"), "--tls-domain", "localhost"])
        .arg("--ca-cert")
        .arg(scratch.path("ca.pem"))
        .output()
        .expect("the client runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("Unauthenticated"), "{}", String::from_utf8_lossy(&output.stderr));

    let coordinator = scrape(coordinator_metrics);
    assert!(coordinator.contains("tidemark_requests_total{method=\"Query\",code=\"Ok\"} 2"), "{coordinator}");
    // Calls refused before any handler runs are counted too.
    assert!(coordinator.contains("tidemark_requests_total{method=\"Query\",code=\"Unauthenticated\"} 3"), "{coordinator}");
    assert!(coordinator.contains("tidemark_requests_total{method=\"Status\",code=\"Unauthenticated\"} 1"), "{coordinator}");
    let resident: i64 = coordinator
        .lines()
        .find_map(|l| l.strip_prefix("tidemark_process_resident_memory_bytes "))
        .expect("the coordinator's RSS")
        .trim()
        .parse()
        .expect("a number");
    assert!(resident > 1 << 20, "{resident}");
    let longest: f64 = coordinator
        .lines()
        .filter(|l| l.starts_with("tidemark_request_duration_seconds_bucket") && l.contains("method=\"Query\""))
        .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next()?.parse().ok())
        .fold(0.0, f64::max);
    assert!(longest >= 60.0, "latency buckets reach the longest wait of a call: {longest}");
    assert!(coordinator.contains("tidemark_worker_connected{process=\"0\"} 1"), "{coordinator}");
    let worker = scrape(worker_metrics);
    assert!(worker.contains("tidemark_worker_ingested_records_total 0"), "{worker}");
    let frontier: i64 = worker
        .lines()
        .find_map(|l| l.strip_prefix("tidemark_worker_frontier_ms "))
        .expect("a frontier gauge")
        .trim()
        .parse()
        .expect("a number");
    assert!(frontier > 1_700_000_000_000, "the frontier is a wall-clock time: {frontier}");
    drop(runtime);
}
