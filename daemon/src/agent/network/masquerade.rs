//! What leaves the cluster CIDR is masqueraded to the node's address;
//! pod-to-pod traffic, also between nodes, keeps the pod's address (as
//! flannel's rules do). Forwarding to and from pods is accepted even on
//! hosts whose FORWARD policy drops (Docker sets that).
//!
//! The rules live in chains of their own, `RK3S-POSTRTG` (nat) and
//! `RK3S-FWD` (filter), replaced whole by `iptables-restore --noflush`
//! (which flushes a chain it declares), so they are never half-written;
//! the jumps into them are added once.

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const NAT_CHAIN: &str = "RK3S-POSTRTG";
const FWD_CHAIN: &str = "RK3S-FWD";

/// The `iptables-restore` input for `cluster_cidr`.
pub fn restore_input(cluster_cidr: &str) -> String {
    format!(
        "*nat\n\
         :{NAT_CHAIN} - [0:0]\n\
         -A {NAT_CHAIN} -s {cluster_cidr} -d {cluster_cidr} -m comment --comment \"rk3s: pod to pod\" -j RETURN\n\
         -A {NAT_CHAIN} -s {cluster_cidr} ! -d 224.0.0.0/4 -m comment --comment \"rk3s: leaving the cluster\" -j MASQUERADE --random-fully\n\
         COMMIT\n\
         *filter\n\
         :{FWD_CHAIN} - [0:0]\n\
         -A {FWD_CHAIN} -s {cluster_cidr} -m comment --comment \"rk3s: from pods\" -j ACCEPT\n\
         -A {FWD_CHAIN} -d {cluster_cidr} -m comment --comment \"rk3s: to pods\" -j ACCEPT\n\
         COMMIT\n"
    )
}

async fn iptables(args: &[&str]) -> Result<bool, String> {
    let o = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run `iptables` (install iptables): {e}"))?;
    Ok(o.status.success())
}

/// Make sure `chain` is jumped to from `table`'s `from` chain.
async fn jump(table: &str, from: &str, chain: &str) -> Result<(), String> {
    if iptables(&["-t", table, "-C", from, "-j", chain]).await? {
        return Ok(());
    }
    if iptables(&["-t", table, "-A", from, "-j", chain]).await? {
        Ok(())
    } else {
        Err(format!("iptables -t {table} -A {from} -j {chain} failed"))
    }
}

/// Both chains and the jumps into them as iptables lists them, to tell
/// whether they are still as installed.
pub async fn snapshot() -> Result<String, String> {
    let mut out = String::new();
    for (table, chain, from) in [
        ("nat", NAT_CHAIN, "POSTROUTING"),
        ("filter", FWD_CHAIN, "FORWARD"),
    ] {
        for listed in [chain, from] {
            let o = Command::new("iptables")
                .args(["-w", "-t", table, "-S", listed])
                .output()
                .await
                .map_err(|e| format!("cannot run `iptables` (install iptables): {e}"))?;
            if !o.status.success() {
                return Err(String::from_utf8_lossy(&o.stderr).trim().to_string());
            }
            let text = String::from_utf8_lossy(&o.stdout);
            // Only our chain and the jump into it: other rules of the
            // built-in chain (CNI's, Docker's) change on their own.
            for line in text
                .lines()
                .filter(|l| listed == chain || l.contains(chain))
            {
                out.push_str(table);
                out.push(' ');
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// Install (or refresh) the rules for `cluster_cidr`.
pub async fn ensure(cluster_cidr: &str) -> Result<(), String> {
    let mut child = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `iptables-restore` (install iptables): {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(restore_input(cluster_cidr).as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    drop(stdin);
    let o = child.wait_with_output().await.map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!(
            "iptables-restore: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    jump("nat", "POSTROUTING", NAT_CHAIN).await?;
    jump("filter", "FORWARD", FWD_CHAIN).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_to_pod_returns_before_masquerade() {
        let s = restore_input("10.42.0.0/16");
        let ret = s
            .find("-d 10.42.0.0/16 -m comment --comment \"rk3s: pod to pod\" -j RETURN")
            .unwrap();
        let masq = s.find("-j MASQUERADE").unwrap();
        assert!(ret < masq, "{s}");
        assert_eq!(s.matches("COMMIT").count(), 2);
    }
}
