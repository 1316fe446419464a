//! The Kubernetes manifests (k8s/) and the Dockerfile, proven as far as they can be
//! without a Kubernetes cluster:
//!
//! - every overlay renders with `kubectl kustomize` and validates with
//!   `kubernetes-validate --strict` against pinned Kubernetes versions (and an unknown
//!   field does fail that check);
//! - the pool size, the peer and worker lists the processes derive, the ports, probes,
//!   metrics annotations and environment variable names agree with each other and with
//!   what the binary accepts; the Dockerfile's user, ports and binary agree with them;
//! - the dev overlay's StatefulSet played on loopback: worker processes started with
//!   exactly the environment its pods get (HOSTNAME=tidemark-worker-N, the ConfigMap,
//!   the container's command), the headless DNS names mapped to loopback ports, and the
//!   coordinator Deployment's command beside them, form one cluster and answer queries;
//!   the probes' health services say what the manifests rely on.
//!
//! `kubectl` and `kubernetes-validate` come from `target/k8s-venv` (scripts/test installs
//! both, pinned) or `TIDEMARK_KUBECTL` / `TIDEMARK_KUBERNETES_VALIDATE`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_yaml::Value;
use tidemark_coordinator::config::expand_template;
use tidemark_proto::v1::tidemark_client::TidemarkClient;
use tidemark_proto::v1::{QueryRequest, StatusRequest};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use common::{free_ports, Children};

/// Kubernetes versions the rendered manifests must be valid for: the oldest supported
/// here (gRPC probes need 1.27) and the newest kubernetes-validate 1.37.0 knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30", "1.37"];

/// The worker's and the coordinator's health service names, as the probes name them.
const WORKER_SERVICE: &str = tidemark_proto::internal::v1::worker_server::SERVICE_NAME;
const PUBLIC_SERVICE: &str = tidemark_proto::v1::tidemark_server::SERVICE_NAME;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Tools {
    kubectl: PathBuf,
    validate: PathBuf,
}

/// The pinned tools, or None (the test is skipped) when they are not installed and
/// `TIDEMARK_REQUIRE_K8S_TOOLS` is unset. scripts/test installs them and sets it.
fn tools() -> Option<Tools> {
    let venv = repo().join("target/k8s-venv/bin");
    let find = |var: &str, name: &str| std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| venv.join(name));
    let tools = Tools { kubectl: find("TIDEMARK_KUBECTL", "kubectl"), validate: find("TIDEMARK_KUBERNETES_VALIDATE", "kubernetes-validate") };
    if tools.kubectl.is_file() && tools.validate.is_file() {
        return Some(tools);
    }
    if std::env::var_os("TIDEMARK_REQUIRE_K8S_TOOLS").is_some() {
        panic!("kubectl and kubernetes-validate are required (scripts/test installs them into target/k8s-venv) but {} or {} is missing", tools.kubectl.display(), tools.validate.display());
    }
    eprintln!("skipped: no kubectl/kubernetes-validate in target/k8s-venv (run scripts/test once to install them)");
    None
}

fn overlays() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo().join("k8s/overlays"))
        .expect("k8s/overlays exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.iter().any(|d| d.ends_with("dev")) && dirs.iter().any(|d| d.ends_with("prod")), "the dev and prod overlays exist: {dirs:?}");
    dirs
}

/// `kubectl kustomize DIR`.
fn render(tools: &Tools, overlay: &Path) -> String {
    let out = Command::new(&tools.kubectl).arg("kustomize").arg(overlay).output().expect("kubectl runs");
    assert!(out.status.success(), "kubectl kustomize {} failed: {}", overlay.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 manifests")
}

/// `kubernetes-validate --strict -k VERSION` of `yaml`: its success and output.
fn validate(tools: &Tools, yaml: &str, version: &str) -> (bool, String) {
    let scratch = common::Scratch::new("k8s-validate");
    let file = scratch.path("rendered.yaml");
    std::fs::write(&file, yaml).expect("writing the rendered manifests");
    let out = Command::new(&tools.validate).args(["--strict", "-k", version]).arg(&file).output().expect("kubernetes-validate runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The rendered objects of one overlay.
struct Manifests(Vec<Value>);

impl Manifests {
    fn parse(yaml: &str) -> Self {
        Manifests(serde_yaml::Deserializer::from_str(yaml).map(|doc| Value::deserialize(doc).expect("valid YAML")).filter(|v| !v.is_null()).collect())
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.0
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} named {name} in the rendered manifests"))
    }

    fn workers(&self) -> &Value {
        self.get("StatefulSet", "tidemark-worker")
    }

    fn coordinator(&self) -> &Value {
        self.get("Deployment", "tidemark-coordinator")
    }

    /// The environment a pod's first container gets, `pod_name` filled in for
    /// `metadata.name`; Secret references are listed apart (their values are not here).
    fn pod_env(&self, workload: &Value, pod_name: &str) -> (BTreeMap<String, String>, Vec<String>) {
        let container = &workload["spec"]["template"]["spec"]["containers"][0];
        let mut env = BTreeMap::new();
        let mut secrets = Vec::new();
        for source in seq(&container["envFrom"]) {
            let name = str_of(&source["configMapRef"]["name"]);
            let data = self.get("ConfigMap", name)["data"].as_mapping().expect("ConfigMap data");
            for (k, v) in data {
                env.insert(str_of(k).to_owned(), str_of(v).to_owned());
            }
        }
        for var in seq(&container["env"]) {
            let name = str_of(&var["name"]).to_owned();
            if let Some(value) = var["value"].as_str() {
                env.insert(name, value.to_owned());
            } else if var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
                env.insert(name, pod_name.to_owned());
            } else if var["valueFrom"]["secretKeyRef"].is_mapping() {
                secrets.push(name);
            } else {
                panic!("an environment variable this test cannot reproduce: {var:?}");
            }
        }
        (env, secrets)
    }
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("expected a string, found {v:?}"))
}

/// A container's ports by name.
fn container_ports(workload: &Value) -> BTreeMap<String, u16> {
    seq(&workload["spec"]["template"]["spec"]["containers"][0]["ports"])
        .iter()
        .map(|p| (str_of(&p["name"]).to_owned(), p["containerPort"].as_u64().expect("a port number") as u16))
        .collect()
}

/// The port of a `host:port` address.
fn port_of(address: &str) -> u16 {
    address.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("{address:?} has no port"))
}

/// A Tidemark setting given as an environment variable (TIDEMARK_LOG is the log filter,
/// read before the flags).
fn is_setting(name: &str) -> bool {
    name.starts_with("TIDEMARK_") && name != "TIDEMARK_LOG"
}

/// The `[env: NAME=...]` names in `tidemark <command> --help`.
fn env_names(command: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark")).args([command, "--help"]).output().expect("tidemark runs");
    assert!(out.status.success(), "tidemark {command} --help failed: {}", String::from_utf8_lossy(&out.stderr));
    let help = String::from_utf8(out.stdout).expect("UTF-8 help");
    help.split("[env: ").skip(1).map(|rest| rest.split(['=', ']']).next().expect("a name").to_owned()).collect()
}

#[test]
fn overlays_render_and_validate_strictly() {
    let Some(tools) = tools() else { return };
    let kinds = ["Namespace", "ConfigMap", "Service", "StatefulSet", "Deployment", "PodDisruptionBudget"];
    let mut dev = None;
    for overlay in overlays() {
        let yaml = render(&tools, &overlay);
        for version in KUBERNETES_VERSIONS {
            let (ok, report) = validate(&tools, &yaml, version);
            assert!(ok, "{} is not valid for Kubernetes {version}:\n{report}", overlay.display());
            for kind in kinds {
                assert!(report.contains(&format!("passed for resource {}/", kind.to_lowercase())), "{kind} was not validated:\n{report}");
            }
        }
        if overlay.ends_with("dev") {
            dev = Some(yaml);
        }
    }
    // The check bites: a misspelt field in the StatefulSet fails strict validation.
    let yaml = dev.expect("the dev overlay was rendered");
    let broken = yaml.replacen("podManagementPolicy: Parallel", "podManagementPolicy: Parallel\n  replicaz: 3", 1);
    assert_ne!(broken, yaml, "the dev overlay sets podManagementPolicy");
    let (ok, report) = validate(&tools, &broken, KUBERNETES_VERSIONS[0]);
    assert!(!ok && report.contains("replicaz"), "strict validation accepted an unknown field:\n{report}");
}

#[test]
fn pool_size_peer_lists_and_ports_agree() {
    let Some(tools) = tools() else { return };
    let worker_env_names = env_names("worker");
    let coordinator_env_names = env_names("coordinator");
    let dockerfile = Dockerfile::read();
    for overlay in overlays() {
        let m = Manifests::parse(&render(&tools, &overlay));
        let at = overlay.display();
        let (sts, deployment) = (m.workers(), m.coordinator());
        let replicas = sts["spec"]["replicas"].as_u64().expect("replicas") as usize;
        let set_name = str_of(&sts["metadata"]["name"]);
        let pod0 = format!("{set_name}-0");
        let (env, worker_secrets) = m.pod_env(sts, &pod0);
        let processes: usize = env["TIDEMARK_PROCESSES"].parse().expect("TIDEMARK_PROCESSES is a number");
        assert_eq!(processes, replicas, "{at}: the StatefulSet's replicas and TIDEMARK_PROCESSES differ");
        assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel", "{at}: pods must start together to form the cluster");
        assert_eq!(sts["spec"]["updateStrategy"]["type"], "OnDelete", "{at}: versions must not mix in one cluster");

        // Each pod's process index comes from its name.
        for i in 0..replicas {
            let (pod_env, _) = m.pod_env(sts, &format!("{set_name}-{i}"));
            assert_eq!(tidemark_worker::serve::ordinal(&pod_env["HOSTNAME"]), Some(i), "{at}: pod {i}'s HOSTNAME");
        }

        // The headless Service names the pods; its ports are the container's.
        let service_name = str_of(&sts["spec"]["serviceName"]);
        let headless = m.get("Service", service_name);
        assert_eq!(headless["spec"]["clusterIP"], "None", "{at}: the worker Service must be headless");
        assert_eq!(headless["spec"]["publishNotReadyAddresses"], true, "{at}: peers must resolve before they are ready");
        let pod_labels = sts["spec"]["template"]["metadata"]["labels"].as_mapping().expect("pod labels");
        for (k, v) in headless["spec"]["selector"].as_mapping().expect("a selector") {
            assert_eq!(pod_labels.get(k), Some(v), "{at}: the headless Service does not select the worker pods");
        }
        let ports = container_ports(sts);
        for port in seq(&headless["spec"]["ports"]) {
            let target = str_of(&port["targetPort"]);
            assert_eq!(Some(&(port["port"].as_u64().expect("a port") as u16)), ports.get(target), "{at}: Service port {target}");
        }

        // The peer list every process derives, and the coordinator's list of workers.
        let peers = expand_template(&env["TIDEMARK_PEER_TEMPLATE"], processes).expect("a peer template");
        let expected: Vec<String> = (0..replicas).map(|i| format!("{set_name}-{i}.{service_name}:{}", ports["timely"])).collect();
        assert_eq!(peers, expected, "{at}: peers");
        let (coordinator_env, coordinator_secrets) = m.pod_env(deployment, "tidemark-coordinator");
        let workers = expand_template(&coordinator_env["TIDEMARK_WORKER_TEMPLATE"], coordinator_env["TIDEMARK_PROCESSES"].parse().expect("a number"))
            .expect("a worker template");
        let expected: Vec<String> = (0..replicas).map(|i| format!("{set_name}-{i}.{service_name}:{}", ports["internal"])).collect();
        assert_eq!(workers, expected, "{at}: the coordinator's workers");
        assert_eq!(port_of(&env["TIDEMARK_LISTEN"]), ports["internal"], "{at}: the worker's internal port");

        // Probes: the worker's on its internal port (readiness: the formed cluster), the
        // coordinator's on its public port.
        let worker_container = &sts["spec"]["template"]["spec"]["containers"][0];
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            assert_eq!(worker_container[probe]["grpc"]["port"].as_u64(), Some(ports["internal"].into()), "{at}: worker {probe}");
        }
        assert_eq!(worker_container["readinessProbe"]["grpc"]["service"], WORKER_SERVICE, "{at}");
        let coordinator_ports = container_ports(deployment);
        assert_eq!(port_of(&coordinator_env["TIDEMARK_COORDINATOR_LISTEN"]), coordinator_ports["grpc"], "{at}: the public port");
        let coordinator_container = &deployment["spec"]["template"]["spec"]["containers"][0];
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            assert_eq!(coordinator_container[probe]["grpc"]["port"].as_u64(), Some(coordinator_ports["grpc"].into()), "{at}: coordinator {probe}");
        }
        for probe in ["startupProbe", "readinessProbe"] {
            assert_eq!(coordinator_container[probe]["grpc"]["service"], PUBLIC_SERVICE, "{at}: coordinator {probe}");
        }
        // Alive while it waits for a lost worker process (it reconnects by itself).
        assert_eq!(coordinator_container["livenessProbe"]["grpc"]["service"], "", "{at}: coordinator liveness");
        // A worker process takes one coordinator's session at a time: a new coordinator
        // can only connect once the old one is gone.
        assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate", "{at}: coordinator rollout");
        let public = m.get("Service", "tidemark");
        for port in seq(&public["spec"]["ports"]) {
            let target = str_of(&port["targetPort"]);
            assert!(coordinator_ports.contains_key(target), "{at}: the public Service's target {target}");
        }

        for (workload, env, ports, command, known, secrets) in [
            (sts, &env, &ports, "worker", &worker_env_names, &worker_secrets),
            (deployment, &coordinator_env, &coordinator_ports, "coordinator", &coordinator_env_names, &coordinator_secrets),
        ] {
            let template = &workload["spec"]["template"];
            // Prometheus scrapes the metrics port the process listens on.
            let annotations = &template["metadata"]["annotations"];
            assert_eq!(annotations["prometheus.io/scrape"], "true", "{at}: {command}");
            assert_eq!(str_of(&annotations["prometheus.io/port"]).parse::<u16>().ok(), Some(ports["metrics"]), "{at}: {command}");
            assert_eq!(port_of(&env["TIDEMARK_METRICS_LISTEN"]), ports["metrics"], "{at}: {command}'s metrics port");
            // The container runs this subcommand, and every setting it is given is one the
            // subcommand reads (a misspelt name would be ignored silently).
            let container = &template["spec"]["containers"][0];
            assert_eq!(container["args"][0], command, "{at}");
            // The shared ConfigMap's settings are read by one of the two; the container's
            // own variables (Secrets included) by its subcommand.
            for name in env.keys().filter(|n| is_setting(n)) {
                assert!(worker_env_names.contains(name) || coordinator_env_names.contains(name), "{at}: neither subcommand reads {name}");
            }
            for var in seq(&container["env"]).iter().map(|v| str_of(&v["name"])).filter(|n| is_setting(n)) {
                assert!(known.contains(var), "{at}: `tidemark {command}` does not read {var}");
            }
            assert!(secrets.iter().all(|s| known.contains(s)), "{at}: {command}'s Secret variables {secrets:?}");
            // Non-root, as the image's user; resources set.
            let pod_security = &template["spec"]["securityContext"];
            assert_eq!(pod_security["runAsNonRoot"], true, "{at}: {command}");
            assert_eq!(pod_security["runAsUser"].as_u64(), Some(dockerfile.user), "{at}: {command} runs as the image's user");
            assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false, "{at}: {command}");
            assert!(container["resources"]["requests"]["memory"].is_string() && container["resources"]["limits"]["memory"].is_string(), "{at}: {command}");
            // The image exposes every port the container names.
            for port in ports.values() {
                assert!(dockerfile.exposed.contains(port), "{at}: the Dockerfile does not expose {command}'s port {port}");
            }
        }
        // Each worker pod's ingest log is on a volume of its own that outlives the pod.
        let data_dir = &env["TIDEMARK_DATA_DIR"];
        let mounts = seq(&sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]);
        let mount = mounts.iter().find(|m| str_of(&m["mountPath"]) == data_dir.as_str()).unwrap_or_else(|| panic!("{at}: {data_dir} is not mounted"));
        let claims = seq(&sts["spec"]["volumeClaimTemplates"]);
        assert!(claims.iter().any(|c| c["metadata"]["name"] == mount["name"]), "{at}: the data volume comes from a claim template");
        if overlay.ends_with("prod") {
            for name in ["TIDEMARK_KAFKA_BROKERS", "TIDEMARK_POSTGRES_URL", "TIDEMARK_INTERNAL_SECRET"] {
                assert!(worker_secrets.contains(&name.to_owned()), "{at}: the workers' {name} comes from a Secret");
            }
            assert!(coordinator_secrets.contains(&"TIDEMARK_TOKENS".to_owned()), "{at}: the API tokens come from a Secret");
            assert!(replicas > 2, "{at}: prod runs more workers than dev");
        }
    }
}

/// What the tests read from the Dockerfile.
struct Dockerfile {
    stages: usize,
    user: u64,
    exposed: BTreeSet<u16>,
    entrypoint: String,
    text: String,
}

impl Dockerfile {
    fn read() -> Self {
        let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("the Dockerfile");
        let instructions: Vec<(&str, &str)> =
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).filter_map(|l| l.split_once(' ')).collect();
        let last = |name: &str| instructions.iter().rev().find(|(i, _)| *i == name).map(|(_, rest)| rest.trim()).unwrap_or_else(|| panic!("no {name} in the Dockerfile"));
        let user = last("USER").split(':').next().and_then(|u| u.parse().ok()).expect("a numeric USER");
        let exposed = last("EXPOSE").split_whitespace().map(|p| p.parse().expect("a port number")).collect();
        let stages = instructions.iter().filter(|(i, _)| *i == "FROM").count();
        Dockerfile { stages, user, exposed, entrypoint: last("ENTRYPOINT").to_owned(), text }
    }
}

#[test]
fn the_dockerfile_builds_the_binary_the_manifests_run() {
    let dockerfile = Dockerfile::read();
    assert!(dockerfile.stages >= 2, "a multi-stage build: a build stage and a small runtime stage");
    assert!(dockerfile.user > 0, "the image runs as a non-root user");
    let binary = Path::new(env!("CARGO_BIN_EXE_tidemark")).file_name().expect("a file name").to_string_lossy().into_owned();
    assert!(dockerfile.text.contains(&format!("--bin {binary}")), "the build stage builds the `{binary}` binary");
    assert_eq!(dockerfile.entrypoint, format!("[\"/usr/local/bin/{binary}\"]"), "the entry point is that binary");
    assert!(dockerfile.text.contains("FROM debian:bookworm-slim") || dockerfile.text.contains("FROM gcr.io/distroless"), "a slim runtime base");
    // The default command, `up` on all interfaces, is one the binary accepts.
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark")).args(["up", "--listen", "0.0.0.0:6875", "--metrics-listen", "0.0.0.0:6876", "--help"]).output().expect("tidemark runs");
    assert!(out.status.success(), "the image's default command: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts `tidemark <args>` with exactly `env` (nothing inherited but PATH).
fn start_pod(args: &[Value], env: &BTreeMap<String, String>) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args.iter().map(str_of))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .stdout(Stdio::null())
        .spawn()
        .expect("the tidemark binary starts")
}

async fn health(port: u16, service: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).ok()?.connect_timeout(Duration::from_secs(2)).connect().await.ok()?;
    let answer = tokio::time::timeout(Duration::from_secs(5), HealthClient::new(channel).check(HealthCheckRequest { service: service.to_owned() })).await.ok()?.ok()?;
    ServingStatus::try_from(answer.into_inner().status).ok()
}

async fn wait_for_health(port: u16, service: &str, want: ServingStatus, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    loop {
        let status = health(port, service).await;
        if status == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: health of {service:?} on port {port} is {status:?}, not {want:?}, after {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_statefulset_plays_on_loopback() {
    let Some(tools) = tools() else { return };
    let m = Manifests::parse(&render(&tools, &repo().join("k8s/overlays/dev")));
    let (sts, deployment) = (m.workers(), m.coordinator());
    let replicas = sts["spec"]["replicas"].as_u64().expect("replicas") as usize;
    let set_name = str_of(&sts["metadata"]["name"]);
    let service_name = str_of(&sts["spec"]["serviceName"]);
    let ports = container_ports(sts);

    // Every pod's DNS name and port, mapped to a loopback port of its own.
    let free = free_ports(3 * replicas + 2);
    let (timely, internal, metrics) = (&free[..replicas], &free[replicas..2 * replicas], &free[2 * replicas..3 * replicas]);
    let mut map = Vec::new();
    for i in 0..replicas {
        map.push(format!("{set_name}-{i}.{service_name}:{}=127.0.0.1:{}", ports["timely"], timely[i]));
        map.push(format!("{set_name}-{i}.{service_name}:{}=127.0.0.1:{}", ports["internal"], internal[i]));
    }
    let map = map.join(",");
    let data = common::Scratch::new("k8s-dev");
    let worker_env = |i: usize| {
        let (mut env, secrets) = m.pod_env(sts, &format!("{set_name}-{i}"));
        assert!(secrets.is_empty(), "the dev overlay needs no Secret");
        assert_eq!(env["HOSTNAME"], format!("tidemark-worker-{i}"));
        // What differs on loopback: the listening ports (pods each have their own IP).
        env.insert("TIDEMARK_LISTEN".into(), format!("127.0.0.1:{}", internal[i]));
        env.insert("TIDEMARK_METRICS_LISTEN".into(), format!("127.0.0.1:{}", metrics[i]));
        env.insert("TIDEMARK_ADDRESS_MAP".into(), map.clone());
        // Each pod has a volume of its own at its data directory.
        env.insert("TIDEMARK_DATA_DIR".into(), data.path(&format!("pod-{i}")).display().to_string());
        env
    };
    let worker_args = seq(&sts["spec"]["template"]["spec"]["containers"][0]["args"]);
    let mut pods = Children(vec![start_pod(worker_args, &worker_env(0))]);

    // Alone, process 0 is alive but not ready: its peers have not joined.
    wait_for_health(internal[0], "", ServingStatus::Serving, Duration::from_secs(60), "worker 0 alone").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(health(internal[0], WORKER_SERVICE).await, Some(ServingStatus::NotServing), "worker 0 is ready without its peers");
    for i in 1..replicas {
        pods.0.push(start_pod(worker_args, &worker_env(i)));
    }
    for (i, port) in internal.iter().enumerate() {
        wait_for_health(*port, WORKER_SERVICE, ServingStatus::Serving, Duration::from_secs(60), &format!("worker {i}")).await;
    }

    // The coordinator, as its Deployment runs it.
    let (public, coordinator_metrics) = (free[3 * replicas], free[3 * replicas + 1]);
    let (mut env, _) = m.pod_env(deployment, "tidemark-coordinator");
    env.insert("TIDEMARK_COORDINATOR_LISTEN".into(), format!("127.0.0.1:{public}"));
    env.insert("TIDEMARK_METRICS_LISTEN".into(), format!("127.0.0.1:{coordinator_metrics}"));
    env.insert("TIDEMARK_ADDRESS_MAP".into(), map.clone());
    pods.0.push(start_pod(seq(&deployment["spec"]["template"]["spec"]["containers"][0]["args"]), &env));
    wait_for_health(public, PUBLIC_SERVICE, ServingStatus::Serving, Duration::from_secs(60), "the coordinator").await;

    let mut client = TidemarkClient::connect(format!("http://127.0.0.1:{public}")).await.expect("the coordinator answers");
    let status = client.status(StatusRequest {}).await.expect("status").into_inner();
    assert_eq!(status.workers.len(), replicas, "one cluster of every worker pod");
    let threads: u32 = env["TIDEMARK_WORKERS"].parse().expect("threads");
    for (i, w) in status.workers.iter().enumerate() {
        assert!(w.connected && w.process == i as u32 && w.threads == threads, "worker {i}: {w:?}");
    }

    // The generator's traffic shows in the views; a lookup by key is answered by the
    // process that owns it, with that key's rows only.
    let deadline = Instant::now() + Duration::from_secs(60);
    let sessions = loop {
        let rows = client.query(QueryRequest { view: "sessions".into(), limit: 5, ..Default::default() }).await.expect("a query").into_inner().rows;
        if !rows.is_empty() {
            break rows;
        }
        assert!(Instant::now() < deadline, "no sessions after 60 s of generated traffic");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let key = sessions[0].row.as_ref().expect("a row").values[0].clone();
    let answer = client.query(QueryRequest { view: "sessions".into(), key: vec![key.clone()], ..Default::default() }).await.expect("a lookup").into_inner();
    assert!(!answer.rows.is_empty(), "the lookup of a listed key found nothing");
    assert!(answer.rows.iter().all(|r| r.row.as_ref().expect("a row").values[0] == key), "the lookup returned other keys");
    let kpis = client.query(QueryRequest { view: "kpis".into(), ..Default::default() }).await.expect("kpis").into_inner();
    assert!(!kpis.rows.is_empty(), "no KPIs from generated traffic");

    // One failure domain: when a worker pod dies, its peers exit (to be restarted), and
    // the coordinator turns NOT_SERVING until the pool is back, then serves again.
    let last = replicas - 1;
    pods.0[last].kill().expect("killing a worker");
    let _ = pods.0[last].wait();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(code) = pods.0[0].try_wait().expect("polling worker 0") {
            assert_eq!(code.code(), Some(70), "worker 0 exits with the cluster-lost code");
            break;
        }
        assert!(Instant::now() < deadline, "worker 0 kept running without its peer");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for_health(public, PUBLIC_SERVICE, ServingStatus::NotServing, Duration::from_secs(30), "the coordinator after losing a worker").await;
    assert_eq!(health(public, "").await, Some(ServingStatus::Serving), "the coordinator stays alive (its liveness probe passes)");
    // Kubernetes restarts the pods; the same coordinator reconnects to them.
    for i in 0..replicas {
        let _ = pods.0[i].kill();
        let _ = pods.0[i].wait();
        pods.0[i] = start_pod(worker_args, &worker_env(i));
    }
    wait_for_health(public, PUBLIC_SERVICE, ServingStatus::Serving, Duration::from_secs(90), "the coordinator once the pool is back").await;
    client.query(QueryRequest { view: "kpis".into(), ..Default::default() }).await.expect("queries again");
}
