//! Pod workers: each pod is synced by a task of its own, as upstream's
//! kubelet gives each pod a goroutine. A pass that waited for every pod
//! made a pod arriving in the middle of a burst wait for the slowest
//! sandbox of the pass before it (and a probe's timeout held up every
//! other pod); now it starts as soon as a slot is free.

use super::pods::Tracked;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};

/// The pods being synced, and what each worker hands back when done.
pub struct Workers {
    busy: HashSet<String>,
    tx: mpsc::UnboundedSender<(String, Tracked)>,
    rx: mpsc::UnboundedReceiver<(String, Tracked)>,
    /// At most this many syncs talk to the runtime at once: a burst of
    /// new pods queues here instead of flooding a two-core node.
    slots: Arc<Semaphore>,
}

/// Hands the pod's state back however its worker ends: a worker that
/// panicked must not leave its pod marked busy for good (the state is
/// lost then, as if the pod were new to this kubelet).
struct Handback {
    uid: String,
    st: Option<Tracked>,
    tx: mpsc::UnboundedSender<(String, Tracked)>,
}

impl Drop for Handback {
    fn drop(&mut self) {
        let st = self.st.take().unwrap_or_default();
        // The kubelet stopped: nobody is left to take it.
        let _ = self.tx.send((std::mem::take(&mut self.uid), st));
    }
}

impl Workers {
    pub fn new(parallel: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            busy: HashSet::new(),
            tx,
            rx,
            slots: Arc::new(Semaphore::new(parallel)),
        }
    }

    pub fn busy(&self, uid: &str) -> bool {
        self.busy.contains(uid)
    }

    /// Whether no pod is being synced.
    pub fn idle(&self) -> bool {
        self.busy.is_empty()
    }

    /// Run `sync` on the pod's state in a task of its own once a slot is
    /// free; the state comes back through [`Self::finished`].
    pub fn start<F, Fut>(&mut self, uid: String, st: Tracked, sync: F)
    where
        F: FnOnce(Tracked) -> Fut + Send + 'static,
        Fut: Future<Output = Tracked> + Send + 'static,
    {
        self.busy.insert(uid.clone());
        let slots = self.slots.clone();
        let back = Handback {
            uid,
            st: None,
            tx: self.tx.clone(),
        };
        tokio::spawn(async move {
            // The whole guard moves in (not just the field written below),
            // so it is dropped when the task ends, however it ends.
            let mut back = back;
            let _slot = slots.acquire_owned().await.expect("never closed");
            // Boxed: a task waiting for a slot then holds a pointer, not
            // room for a whole sync's state; a hundred queued pods held
            // megabytes that way.
            back.st = Some(Box::pin(sync(st)).await);
        });
    }

    /// The next pod whose worker is done, with its state.
    pub async fn finished(&mut self) -> (String, Tracked) {
        let done = self.rx.recv().await.expect("a sender is kept in self");
        self.busy.remove(&done.0);
        done
    }

    /// A pod whose worker is done, if any, without waiting.
    pub fn try_finished(&mut self) -> Option<(String, Tracked)> {
        let done = self.rx.try_recv().ok()?;
        self.busy.remove(&done.0);
        Some(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_slow_pod_holds_up_no_other_and_state_comes_back() {
        let mut w = Workers::new(2);
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
        w.start("slow".into(), Tracked::default(), |mut st| async move {
            let _ = gate_rx.await;
            st.start_time = Some("slow".into());
            st
        });
        w.start("fast".into(), Tracked::default(), |mut st| async move {
            st.start_time = Some("fast".into());
            st
        });
        assert!(w.busy("slow") && w.busy("fast"));
        let (uid, st) = tokio::time::timeout(Duration::from_secs(5), w.finished())
            .await
            .expect("the fast pod finished while the slow one waits");
        assert_eq!(
            (uid.as_str(), st.start_time.as_deref()),
            ("fast", Some("fast"))
        );
        assert!(!w.busy("fast") && w.busy("slow"));
        gate_tx.send(()).unwrap();
        let (uid, st) = w.finished().await;
        assert_eq!(
            (uid.as_str(), st.start_time.as_deref()),
            ("slow", Some("slow"))
        );
        assert!(w.try_finished().is_none());
    }

    #[tokio::test]
    async fn slots_bound_how_many_run_at_once() {
        let mut w = Workers::new(1);
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for i in 0..4 {
            let (running, most) = (running.clone(), most.clone());
            w.start(format!("p{i}"), Tracked::default(), move |st| async move {
                let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                st
            });
        }
        for _ in 0..4 {
            w.finished().await;
        }
        assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_panicking_worker_frees_its_pod() {
        let mut w = Workers::new(1);
        w.start("p".into(), Tracked::default(), |_st| async move {
            panic!("a bug in one pod's sync");
        });
        let (uid, st) = tokio::time::timeout(Duration::from_secs(5), w.finished())
            .await
            .expect("the pod came back");
        assert_eq!(uid, "p");
        assert!(st.start_time.is_none());
        assert!(!w.busy("p"));
    }
}
