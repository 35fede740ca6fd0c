//! The deployment files would actually run: every Kubernetes document in
//! `deploy/*.yaml` validates against vendored, strict schemas of the kinds it
//! uses (`tests/schemas/kubernetes-minimal.schema.json`: unknown fields,
//! wrong types, bad quantities and enum values are errors, as with
//! `kubectl --validate=strict`), and the fields that matter agree with the
//! runtime: one writer per journal, a memory limit that fits the measured
//! resident set, an exit code that tells a drained batch from a finished one,
//! a grace period that leaves room for SHUTDOWN_TIMEOUT, probes and preStop
//! on the health endpoints. The Dockerfile caches dependencies, has a
//! HEALTHCHECK, and `.dockerignore` keeps `target/` out of the context.
//! (No cluster or docker engine here: this checks the files, not a rollout.)

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every document of one YAML file, as JSON values.
fn docs_of(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("valid YAML document"))
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).expect("YAML maps to JSON"))
        .collect()
}

/// Every manifest in `deploy/` (the batch Job, and the fleet's when present).
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.iter().any(|p| p.ends_with("kubernetes.yaml")));
    files
}

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("tests/schemas/kubernetes-minimal.schema.json"))
        .unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&schema).expect("the vendored schema compiles")
}

/// Schema errors of one document, as `path: message` lines.
fn errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{}: {}", e.instance_path(), e))
        .collect()
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[k],
    })
}

fn command(v: &Value) -> String {
    v.as_array()
        .expect("a command list")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A Kubernetes memory quantity in bytes (the suffixes the manifests use).
fn bytes(q: &Value) -> u64 {
    let s = q.as_str().expect("a quantity string");
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, mult) in units {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap() * mult;
        }
    }
    s.parse().unwrap()
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

#[test]
fn every_manifest_validates_against_the_schemas() {
    let v = validator();
    let mut checked = 0;
    for file in manifests() {
        for (i, doc) in docs_of(&file).iter().enumerate() {
            let errs = errors(&v, doc);
            assert!(
                errs.is_empty(),
                "{} document {i} ({}) is invalid:\n{}",
                file.display(),
                doc["kind"],
                errs.join("\n")
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "validated {checked} documents");
}

/// The schema check can fail: each mutation of the shipped Job is refused.
#[test]
fn the_schema_refuses_typos_wrong_types_and_bad_quantities() {
    let v = validator();
    let job = docs_of(&root().join("deploy/kubernetes.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "Job")
        .unwrap();
    assert!(errors(&v, &job).is_empty());
    type Mutation = fn(&mut Value);
    let mutations: [(&str, Mutation); 8] = [
        ("typo in a field name", |j| {
            j["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = json!(40)
        }),
        ("string where an integer goes", |j| {
            j["spec"]["parallelism"] = json!("1")
        }),
        ("bad memory quantity", |j| {
            j["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] =
                json!("128 MB")
        }),
        ("unknown restartPolicy", |j| {
            j["spec"]["template"]["spec"]["restartPolicy"] = json!("Sometimes")
        }),
        ("no containers", |j| {
            j["spec"]["template"]["spec"]["containers"] = json!([])
        }),
        ("env value not a string", |j| {
            j["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = json!(25)
        }),
        ("unknown kind", |j| j["kind"] = json!("Jobb")),
        ("bad podFailurePolicy action", |j| {
            j["spec"]["podFailurePolicy"]["rules"][0]["action"] = json!("Retry")
        }),
    ];
    for (what, mutate) in mutations {
        let mut bad = job.clone();
        mutate(&mut bad);
        assert!(!errors(&v, &bad).is_empty(), "{what}: accepted");
    }
}

#[test]
fn the_batch_job_has_one_writer_fitting_memory_and_a_distinct_unfinished_exit_code() {
    let docs = docs_of(&root().join("deploy/kubernetes.yaml"));
    assert!(
        !docs.iter().any(|d| d["kind"] == "Deployment"
            || d["kind"] == "StatefulSet" && get(d, "spec.replicas").as_u64().unwrap_or(1) > 1),
        "more than one replica would process the same batch"
    );
    let job = docs.iter().find(|d| d["kind"] == "Job").expect("a Job");
    assert_eq!(job["apiVersion"], "batch/v1");
    assert_eq!(
        get(job, "spec.parallelism"),
        1,
        "one process owns the journal"
    );
    assert_eq!(get(job, "spec.completions"), 1);
    assert_eq!(
        get(job, "spec.podReplacementPolicy"),
        "Failed",
        "a new pod only once the old one is gone"
    );
    let pod = get(job, "spec.template.spec");
    assert_eq!(
        pod["restartPolicy"], "Never",
        "podFailurePolicy needs Never"
    );
    let c = &pod["containers"][0];

    // Finished (0) vs drained (the opt-in code): the Job ignores the latter.
    let unfinished: i64 = env(c, "AGENTWAL_UNFINISHED_EXIT")
        .expect("AGENTWAL_UNFINISHED_EXIT set for a Job")
        .parse()
        .unwrap();
    assert!((1..=255).contains(&unfinished) && unfinished != 130);
    let rules = get(job, "spec.podFailurePolicy.rules").as_array().unwrap();
    assert!(
        rules.iter().any(|r| r["action"] == "Ignore"
            && r["onExitCodes"]["operator"] == "In"
            && r["onExitCodes"]["containerName"] == c["name"]
            && r["onExitCodes"]["values"]
                .as_array()
                .unwrap()
                .contains(&json!(unfinished))),
        "exit {unfinished} must be ignored (rescheduled), not counted: {rules:?}"
    );
    assert!(
        !rules.iter().any(|r| r["onExitCodes"]["values"]
            .as_array()
            .is_some_and(|v| v.contains(&json!(0)))),
        "0 means finished"
    );

    // Memory: the journal keeps RSS flat (target <= 64 MiB); the limit gives
    // headroom but stays in the same ballpark, and the request fits under it.
    let limit = bytes(get(c, "resources.limits.memory"));
    let request = bytes(get(c, "resources.requests.memory"));
    assert!(
        limit >= 96 << 20,
        "limit {limit} leaves no headroom over 64 MiB"
    );
    assert!(
        limit <= 512 << 20,
        "limit {limit}: memory is flat, do not hide a leak"
    );
    assert!(request <= limit);

    // The grace period leaves room for the budget.
    let grace = pod["terminationGracePeriodSeconds"].as_f64().unwrap();
    let timeout = env(c, "SHUTDOWN_TIMEOUT").expect("SHUTDOWN_TIMEOUT in env");
    let parsed = agentwal::runtime::shutdown::parse_timeout(timeout).unwrap();
    assert!(
        grace >= parsed.as_secs_f64() + 5.0,
        "grace period {grace}s must exceed SHUTDOWN_TIMEOUT {timeout}s with margin"
    );

    // preStop and probes hit the loopback health server the agent serves.
    let pre_stop = command(get(c, "lifecycle.preStop.exec.command"));
    assert!(
        pre_stop.contains("-X POST") && pre_stop.ends_with("/shutdown"),
        "{pre_stop}"
    );
    assert!(pre_stop.contains("127.0.0.1:8080"), "{pre_stop}");
    let live = command(get(c, "livenessProbe.exec.command"));
    let ready = command(get(c, "readinessProbe.exec.command"));
    assert!(live.ends_with("127.0.0.1:8080/health"), "{live}");
    assert!(ready.ends_with("127.0.0.1:8080/ready"), "{ready}");
    let args = command(&c["args"]);
    assert!(args.contains("--health 127.0.0.1:8080"), "{args}");

    // The journal lives on the claim, which one node mounts at a time.
    let mount = &c["volumeMounts"][0];
    let vol = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume is declared");
    let claim_name = get(vol, "persistentVolumeClaim.claimName");
    let pvc = docs
        .iter()
        .find(|d| d["kind"] == "PersistentVolumeClaim" && d["metadata"]["name"] == *claim_name)
        .expect("the claim is in the file");
    let mode = get(pvc, "spec.accessModes.0");
    assert!(
        mode == "ReadWriteOnce" || mode == "ReadWriteOncePod",
        "{mode}"
    );
    assert!(
        args.contains(&format!(
            "--journal {}/",
            mount["mountPath"].as_str().unwrap()
        )),
        "{args}"
    );
    // The storage note is there (local or block storage, not NFS, and why).
    let text = std::fs::read_to_string(root().join("deploy/kubernetes.yaml")).unwrap();
    for needle in ["not NFS", "fdatasync", "lock", "deploy/fleet.yaml"] {
        assert!(
            text.contains(needle),
            "deploy/kubernetes.yaml must mention {needle:?}"
        );
    }
}

#[test]
fn dockerfile_caches_dependencies_checks_health_and_runs_the_agent_as_pid_1() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(
        text.contains("ENTRYPOINT [\"/usr/local/bin/batch_agent\"]"),
        "exec-form entrypoint"
    );
    assert!(text.contains("STOPSIGNAL SIGTERM"));
    let budget: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ENV SHUTDOWN_TIMEOUT="))
        .expect("ENV SHUTDOWN_TIMEOUT")
        .trim()
        .parse()
        .unwrap();
    assert!(budget < 10, "docker stop sends SIGKILL after 10 s");
    assert!(text.contains("--example batch_agent"));
    assert!(text.contains("USER 10001"));
    // Dependencies are built in their own layer, from the manifests only,
    // before the sources are copied.
    let lines: Vec<&str> = text.lines().collect();
    let pos = |needle: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no line starting with {needle:?}"))
    };
    let manifests = pos("COPY Cargo.toml Cargo.lock");
    let deps = pos("RUN --mount=type=cache");
    let sources = pos("COPY src");
    assert!(
        manifests < deps && deps < sources,
        "dependency layer before sources"
    );
    // The dependency layer sees every workspace member's manifest and a stub
    // for every target Cargo.toml declares; otherwise cargo refuses the
    // manifest and the cached layer never builds.
    let toml = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let members = toml
        .lines()
        .find_map(|l| l.strip_prefix("members = "))
        .expect("[workspace] members");
    for m in members.trim_matches(['[', ']']).split(',') {
        let m = m.trim().trim_matches('"');
        if m != "." {
            let copy = format!("COPY {m}/Cargo.toml {m}/Cargo.toml");
            assert!(text.contains(&copy), "Dockerfile lacks {copy:?}");
        }
    }
    let stub_layer = &lines[manifests..deps].join("\n");
    for section in ["[[example]]", "[[test]]"] {
        for decl in toml.split(section).skip(1) {
            let name = decl
                .lines()
                .find_map(|l| l.strip_prefix("name = "))
                .expect("a declared target's name")
                .trim_matches('"');
            assert!(
                stub_layer.contains(name),
                "the dependency layer has no stub for {section} {name}"
            );
        }
    }
    assert!(
        text.contains("/usr/local/bin/wal-inspect"),
        "the image ships wal-inspect"
    );
    let check = lines
        .iter()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .expect("a HEALTHCHECK");
    assert!(check.contains("/health") || text.contains("127.0.0.1:8080/health"));

    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    let entries: Vec<&str> = ignore.lines().map(str::trim).collect();
    for needed in ["target", ".git"] {
        assert!(
            entries
                .iter()
                .any(|e| e.trim_start_matches("**/").trim_end_matches('/') == needed),
            ".dockerignore must exclude {needed}"
        );
    }
}
