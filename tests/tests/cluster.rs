//! A real server and real agents on 127.0.0.1, driven through rk3sctl.

use rk3s_tests::*;
use std::time::Duration;

const JOIN: Duration = Duration::from_secs(20);

#[test]
fn server_and_three_agents_are_ready() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &[]);
    let agents: Vec<Agent> = (1..=3)
        .map(|i| {
            let name = format!("worker-{i}");
            Agent::start(
                &t.path().join(&name),
                &name,
                &server.url(),
                &server.token_file(),
                &[],
            )
        })
        .collect();
    for a in &agents {
        assert!(
            server.wait_status(&a.name, "Ready", JOIN),
            "{} not Ready: {:?}",
            a.name,
            server.nodes()
        );
    }
    let nodes = server.nodes();
    assert_eq!(nodes.len(), 4, "{nodes:?}");
    for n in &nodes {
        assert_eq!(n["status"], "Ready", "{n}");
        assert_eq!(n["connected"], "server-0", "{n}");
        assert_eq!(n["internal_ip"], "127.0.0.1", "{n}");
        assert!(n["last_heartbeat"].is_string(), "{n}");
        assert!(n["age_seconds"].is_i64(), "{n}");
        assert_eq!(n["version"], format!("v{}", rk3s_api::VERSION), "{n}");
    }
    let server_node = nodes.iter().find(|n| n["name"] == "server-0").unwrap();
    assert_eq!(server_node["roles"], serde_json::json!(["control-plane"]));
    let worker = nodes.iter().find(|n| n["name"] == "worker-1").unwrap();
    assert_eq!(worker["roles"], serde_json::json!([]));

    // Table output carries the documented columns.
    let table = stdout(&server.ctl(&["node", "list"]));
    assert!(
        table.starts_with("NAME   ")
            && table.contains("CONNECTED")
            && table.contains("LAST-HEARTBEAT"),
        "{table}"
    );
    let yaml = stdout(&server.ctl(&["node", "list", "-o", "yaml"]));
    assert!(yaml.contains("name: worker-2"), "{yaml}");

    // The agent's own socket reports its registration, and refuses node commands.
    let st = agents[0].status().unwrap();
    assert_eq!(st["mode"], "agent");
    assert_eq!(st["registration"], "registered");
    let o = ctl(&agents[0].socket, &["node", "list"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("this host runs an agent; run node commands on a server"),
        "{}",
        stderr(&o)
    );

    // Only hashes are stored: no agent password appears in the datastore or the logs.
    let db = std::fs::read(server.data_dir.join("server/db/state.db")).unwrap();
    let wal = std::fs::read(server.data_dir.join("server/db/state.db-wal")).unwrap_or_default();
    for a in &agents {
        let pw = a.password();
        assert_eq!(pw.len(), 32);
        let needle = pw.as_bytes();
        for (what, hay) in [("db", &db), ("wal", &wal)] {
            assert!(
                !hay.windows(needle.len()).any(|w| w == needle),
                "password of {} found in {what}",
                a.name
            );
        }
        assert!(!server.log().contains(&pw) && !a.log().contains(&pw));
    }
    let detail = stdout(&server.ctl(&["node", "show", "worker-1"]));
    assert!(
        detail.contains("Password set:") && detail.contains("kubernetes.io/hostname=worker-1"),
        "{detail}"
    );
    assert!(
        !server
            .log()
            .contains(server.token().rsplit(':').next().unwrap()),
        "token secret logged"
    );
}

#[test]
fn wiped_password_is_rejected_until_the_node_is_forgotten() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &[]);
    let mut a = Agent::start(
        &t.path().join("a"),
        "rebuilt",
        &server.url(),
        &server.token_file(),
        &[],
    );
    assert!(server.wait_status("rebuilt", "Ready", JOIN));
    a.stop();
    std::fs::remove_file(a.node_config_dir().join("password")).unwrap();
    a.restart();
    let rejected = wait_for(JOIN, || {
        let log = a.log();
        log.contains("Node password rejected").then_some(log)
    })
    .expect("agent should report the rejection");
    assert!(
        rejected.contains("rk3sctl node forget rebuilt"),
        "{rejected}"
    );
    assert!(rejected.contains("--with-node-id"), "{rejected}");
    assert!(
        rejected.contains(&a.node_config_dir().join("password").display().to_string()),
        "{rejected}"
    );
    assert!(
        a.wait_registration("rejected", JOIN),
        "agent status should say rejected"
    );

    let o = server.ctl(&["node", "forget", "rebuilt"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("password secret"), "{}", stdout(&o));
    // The agent keeps retrying and now gets in with its new password.
    assert!(
        server.wait_status("rebuilt", "Ready", JOIN),
        "{:?}",
        server.nodes()
    );
    assert!(a.wait_registration("registered", JOIN));
}

#[test]
fn forget_refuses_connected_nodes_and_unknown_names() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &[]);
    let _a = Agent::start(
        &t.path().join("a"),
        "busy",
        &server.url(),
        &server.token_file(),
        &[],
    );
    assert!(server.wait_status("busy", "Ready", JOIN));
    let o = server.ctl(&["node", "forget", "busy"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is connected") && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    let o = server.ctl(&["node", "forget", "no-such-node"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("\"no-such-node\" not found"),
        "{}",
        stderr(&o)
    );
    let o = server.ctl(&["node", "forget", "busy", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("tunnel"), "{}", stdout(&o));
    // Its agent is still running with the same password, so it comes back.
    assert!(server.wait_status("busy", "Ready", JOIN));
}

#[test]
fn rotate_password_changes_the_file_and_the_node_rejoins_after_restart() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &[]);
    let mut a = Agent::start(
        &t.path().join("a"),
        "rot",
        &server.url(),
        &server.token_file(),
        &[],
    );
    assert!(server.wait_status("rot", "Ready", JOIN));
    let before = a.password();
    let o = server.ctl(&["node", "rotate-password", "rot"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let after = a.password();
    assert_ne!(before, after);
    assert_eq!(after.len(), 32);
    let show = stdout(&server.ctl(&["node", "show", "rot", "-o", "json"]));
    assert!(
        show.contains("\"password_rotation_pending\": false"),
        "{show}"
    );
    a.stop();
    a.restart();
    assert!(a.wait_registration("registered", JOIN), "{}", a.log());
    assert!(
        !server.log().contains(&after) && !a.log().contains(&after),
        "new password logged"
    );

    // A node that is not connected gets a clear error.
    a.stop();
    let o = wait_for(JOIN, || {
        let o = server.ctl(&["node", "rotate-password", "rot"]);
        (!o.status.success()).then_some(o)
    })
    .unwrap();
    assert!(stderr(&o).contains("not connected"), "{}", stderr(&o));
}

#[test]
fn rotation_survives_a_crash_on_either_side() {
    let t = tempdir();
    // Agent dies after writing the new password, before acknowledging it.
    let mut server = Server::start(&t.path().join("s"), &[]);
    let mut a = Agent::start(
        &t.path().join("a"),
        "crashy",
        &server.url(),
        &server.token_file(),
        &[],
    );
    assert!(server.wait_status("crashy", "Ready", JOIN));
    a.stop();
    a.set_env(&[("RK3S_TEST_EXIT_AFTER_PASSWORD_WRITE", "1")]);
    a.restart();
    assert!(a.wait_registration("registered", JOIN));
    let old = a.password();
    let o = server.ctl(&["node", "rotate-password", "crashy"]);
    assert!(!o.status.success(), "the agent died before acking");
    assert!(stderr(&o).contains("did not confirm"), "{}", stderr(&o));
    assert_eq!(a.wait_exit(Duration::from_secs(10)), Some(3));
    let new = a.password();
    assert_ne!(old, new, "the agent wrote the new password before dying");
    let show = stdout(&server.ctl(&["node", "show", "crashy", "-o", "json"]));
    assert!(
        show.contains("\"password_rotation_pending\": true"),
        "{show}"
    );
    a.set_env(&[]);
    a.restart();
    assert!(a.wait_registration("registered", JOIN), "{}", a.log());
    let show = stdout(&server.ctl(&["node", "show", "crashy", "-o", "json"]));
    assert!(
        show.contains("\"password_rotation_pending\": false"),
        "{show}"
    );

    // Server dies after the ack, before swapping the hash.
    server.stop();
    server.set_env(&[("RK3S_TEST_EXIT_BEFORE_PASSWORD_SWAP", "1")]);
    server.restart();
    assert!(a.wait_registration("registered", JOIN));
    let before = a.password();
    let o = server.ctl(&["node", "rotate-password", "crashy"]);
    assert!(!o.status.success());
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(3));
    let after = a.password();
    assert_ne!(before, after);
    server.set_env(&[]);
    server.restart();
    // The agent reconnects with the new password and the rotation completes.
    assert!(server.wait_status("crashy", "Ready", JOIN));
    assert!(wait_for(JOIN, || {
        let show = stdout(&server.ctl(&["node", "show", "crashy", "-o", "json"]));
        show.contains("\"password_rotation_pending\": false")
            .then_some(())
    })
    .is_some());
    assert!(a.wait_registration("registered", JOIN));
}

#[test]
fn killed_agent_is_unknown_after_the_grace_period_and_ready_when_back() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &[]);
    let mut a = Agent::start(
        &t.path().join("a"),
        "mortal",
        &server.url(),
        &server.token_file(),
        &[],
    );
    assert!(server.wait_status("mortal", "Ready", JOIN));
    a.kill();
    // Grace is 3 s in tests: still Ready right after the kill...
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server.node("mortal").unwrap()["status"], "Ready");
    // ...and Unknown once it passes.
    assert!(
        server.wait_status("mortal", "Unknown", Duration::from_secs(15)),
        "{:?}",
        server.nodes()
    );
    assert_eq!(server.node("mortal").unwrap()["connected"], "");
    assert!(server.log().contains("node is now Ready=Unknown"));
    a.restart();
    assert!(server.wait_status("mortal", "Ready", JOIN));
    // The server's own node kept heartbeating the whole time.
    assert_eq!(server.node("server-0").unwrap()["status"], "Ready");
}

#[test]
fn wrong_token_is_refused_with_a_clear_error() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &[]);
    let good = server.token();
    let (hash_part, _) = good.split_once("::").unwrap();
    let bad = t.path().join("bad-token");
    std::fs::write(&bad, format!("{hash_part}::node:not-the-secret\n")).unwrap();
    let a = Agent::start(&t.path().join("a"), "intruder", &server.url(), &bad, &[]);
    let log = wait_for(JOIN, || {
        let l = a.log();
        l.contains("rejected the token (401)").then_some(l)
    })
    .expect("agent reports 401");
    assert!(log.contains("--token"), "{log}");
    assert!(
        !log.contains("not-the-secret"),
        "token secret must not be logged: {log}"
    );
    assert!(a.wait_registration("rejected: token not accepted (401)", JOIN));
    assert!(server.node("intruder").is_none());
}

#[test]
fn ca_hash_mismatch_refuses_to_connect() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &[]);
    let secret = server.token().rsplit(':').next().unwrap().to_string();
    let wrong = format!("K10{}::node:{secret}", "0".repeat(64));
    let tf = t.path().join("pinned-wrong");
    std::fs::write(&tf, wrong).unwrap();
    let mut a = Agent::start(&t.path().join("a"), "pinned", &server.url(), &tf, &[]);
    let code = a.wait_exit(JOIN).expect("agent exits on CA mismatch");
    assert_ne!(code, 0);
    let log = a.log();
    let real = rk3sd::credentials::token::ca_hash(&server.ca_pem());
    assert!(log.contains("token CA hash does not match"), "{log}");
    assert!(
        log.contains(&"0".repeat(64)) && log.contains(&real),
        "both hashes named: {log}"
    );
    assert!(server.node("pinned").is_none());
}

#[test]
fn server_restart_brings_every_agent_back_and_loses_nothing() {
    let t = tempdir();
    let mut server = Server::start(&t.path().join("s"), &[]);
    let ca = server.ca_pem();
    let token = server.token();
    let _agents: Vec<Agent> = (1..=3)
        .map(|i| {
            let name = format!("keep-{i}");
            Agent::start(
                &t.path().join(&name),
                &name,
                &server.url(),
                &server.token_file(),
                &[],
            )
        })
        .collect();
    for i in 1..=3 {
        assert!(server.wait_status(&format!("keep-{i}"), "Ready", JOIN));
    }
    let created: Vec<(String, i64)> = server
        .nodes()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["age_seconds"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(server.stop(), Some(0), "clean exit on SIGTERM");
    assert!(server.log().contains("server stopped"));
    server.restart();
    assert_eq!(server.ca_pem(), ca, "same CA after restart");
    assert_eq!(server.token(), token, "same token after restart");
    for i in 1..=3 {
        assert!(
            server.wait_status(&format!("keep-{i}"), "Ready", JOIN),
            "{:?}",
            server.nodes()
        );
    }
    assert!(wait_for(JOIN, || {
        let nodes = server.nodes();
        nodes
            .iter()
            .all(|n| n["connected"] == "server-0")
            .then_some(())
    })
    .is_some());
    let nodes = server.nodes();
    assert_eq!(nodes.len(), created.len());
    for (name, age) in created {
        let n = nodes
            .iter()
            .find(|n| n["name"] == name.as_str())
            .expect("node kept");
        assert!(
            n["age_seconds"].as_i64().unwrap() >= age,
            "{name} was recreated"
        );
    }
}

#[test]
fn with_node_id_appends_a_persistent_id() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &[]);
    let mut a = Agent::start(
        &t.path().join("a"),
        "twin",
        &server.url(),
        &server.token_file(),
        &["--with-node-id"],
    );
    let id = wait_for(JOIN, || {
        std::fs::read_to_string(a.node_config_dir().join("id")).ok()
    })
    .unwrap();
    let id = id.trim().to_string();
    assert_eq!(id.len(), 8);
    let name = format!("twin-{id}");
    assert!(
        server.wait_status(&name, "Ready", JOIN),
        "{:?}",
        server.nodes()
    );
    a.stop();
    a.restart();
    assert!(server.wait_status(&name, "Ready", JOIN));
    assert_eq!(
        server.nodes().len(),
        2,
        "same id after restart: {:?}",
        server.nodes()
    );
}

#[test]
fn agent_reads_its_settings_from_config_files() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &[]);
    let dir = t.path().join("a");
    std::fs::create_dir_all(dir.join("config.toml.d")).unwrap();
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!("server = \"{}\"\nnode-name = \"from-file\"\n", server.url()),
    )
    .unwrap();
    std::fs::write(
        dir.join("config.toml.d/10-token.toml"),
        format!(
            "token-file = \"{}\"\nnode-label = [\"tier=edge\"]\n",
            server.token_file().display()
        ),
    )
    .unwrap();
    let _a = Agent::start_args(
        &dir,
        "from-file",
        vec!["--config".into(), cfg.display().to_string()],
        &[],
    );
    assert!(
        server.wait_status("from-file", "Ready", JOIN),
        "{:?}",
        server.nodes()
    );
    let show = stdout(&server.ctl(&["node", "show", "from-file"]));
    assert!(show.contains("tier=edge"), "{show}");

    // A typo is an error naming the file and the key.
    std::fs::write(
        dir.join("config.toml.d/20-typo.toml"),
        "node-lable = [\"x=y\"]\n",
    )
    .unwrap();
    let o = std::process::Command::new(bin("rk3sd"))
        .args(["agent", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("20-typo.toml") && err.contains("'node-lable'") && err.contains("node-label"),
        "{err}"
    );
}

#[test]
fn legacy_node_passwd_file_is_imported() {
    let t = tempdir();
    let sdir = t.path().join("s");
    let cred = sdir.join("data/server/cred");
    std::fs::create_dir_all(&cred).unwrap();
    std::fs::write(
        cred.join("node-passwd"),
        "legacysecret1234,old-node,old-node,\nbroken-line\n",
    )
    .unwrap();
    let server = Server::start(&sdir, &[]);
    assert!(!cred.join("node-passwd").exists());
    assert!(cred.join("node-passwd.migrated").exists());
    assert!(server.log().contains("skipping bad line") && server.log().contains("line=2"));
    assert!(!server.log().contains("legacysecret1234"));
    // The old node gets in with its old password; an impostor does not.
    let adir = t.path().join("a");
    std::fs::create_dir_all(adir.join("node")).unwrap();
    std::fs::write(adir.join("node/password"), "legacysecret1234\n").unwrap();
    let _a = Agent::start(&adir, "old-node", &server.url(), &server.token_file(), &[]);
    assert!(server.wait_status("old-node", "Ready", JOIN));
    let bdir = t.path().join("b");
    std::fs::create_dir_all(bdir.join("node")).unwrap();
    std::fs::write(bdir.join("node/password"), "somethingelse\n").unwrap();
    let b = Agent::start(&bdir, "old-node", &server.url(), &server.token_file(), &[]);
    assert!(wait_for(JOIN, || b
        .log()
        .contains("Node password rejected")
        .then_some(()))
    .is_some());
}

#[test]
fn secret_flags_do_not_show_in_ps() {
    let t = tempdir();
    let secret = "flag-secret-0123456789";
    let server = Server::start(&t.path().join("s"), &["--token", secret]);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.pid())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(!cmdline.contains(secret), "{cmdline}");
    assert!(cmdline.contains("server"), "{cmdline}");
    assert!(server.token().ends_with(&format!("::server:{secret}")));
    assert!(!server.log().contains(secret));
}
