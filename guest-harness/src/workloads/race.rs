//! Two (or more) pinned threads that announce `READY` in order and then start together:
//! released by the bench through mailbox gates, or (`gated 0`) by a barrier.

use std::sync::mpsc;
use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use control_proto::Message;

use crate::control;
use crate::error::Res;
use crate::gate::Gate;
use crate::job::Params;
use crate::pin;

/// How long a racer's setup, or the hand-over between racers, may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The racing action of one thread, run after its gate opens.
pub type Action<'a> = Box<dyn FnOnce() -> Res<()> + Send + 'a>;

/// One racing thread.
pub struct Racer<'a> {
    /// Thread name; also the `READY` and `GATE` name.
    pub name: &'static str,
    pub cpu: usize,
    /// Runs on the pinned thread before any `READY`; returns the racing action.
    pub setup: Box<dyn FnOnce() -> Res<Action<'a>> + Send + 'a>,
}

/// `gated` (default 1) and `gate_timeout_ms` (default 60000).
#[derive(Debug, Clone, Copy)]
pub struct StartMode {
    pub gated: bool,
    pub gate_timeout: Duration,
}

impl StartMode {
    pub fn from_params(params: &mut Params) -> Res<StartMode> {
        Ok(StartMode {
            gated: params.take_bool("gated", true)?,
            gate_timeout: Duration::from_millis(params.take_u64("gate_timeout_ms", 60_000)?),
        })
    }

    /// A trial bound that leaves room for the gate wait.
    pub fn trial_timeout(&self) -> Duration {
        self.gate_timeout + Duration::from_secs(120)
    }
}

/// Run `racers`, given in `READY` order (racer i owns gate word i). Setups run one after the
/// other in `setup_order`, each on its own pinned thread. Then the gates are announced
/// (gated mode), then each racer in turn sends `READY` and waits. Returns the first error.
/// `gate` must be `Some` in gated mode.
pub fn race(
    mode: StartMode,
    gate: Option<&Gate>,
    racers: Vec<Racer<'_>>,
    setup_order: &[usize],
) -> Res<()> {
    assert_eq!(mode.gated, gate.is_some());
    let count = racers.len();
    let names: Vec<&'static str> = racers.iter().map(|r| r.name).collect();
    let barrier = Barrier::new(count);
    let mut racers: Vec<Option<Racer>> = racers.into_iter().map(Some).collect();
    thread::scope(|s| {
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let mut go: Vec<Option<mpsc::Sender<()>>> = (0..count).map(|_| None).collect();
        let mut handles = Vec::new();
        let mut failure: Option<String> = None;
        for &i in setup_order {
            let racer = racers[i].take().expect("each racer is set up once");
            let (setup_tx, setup_rx) = mpsc::channel::<Res<()>>();
            let (go_tx, go_rx) = mpsc::channel::<()>();
            go[i] = Some(go_tx);
            let ready_tx = ready_tx.clone();
            let barrier = &barrier;
            let body = move || -> Res<()> {
                let action = match pin::pin_to(racer.cpu).and_then(|()| (racer.setup)()) {
                    Ok(action) => {
                        let _ = setup_tx.send(Ok(()));
                        action
                    }
                    Err(e) => {
                        let _ = setup_tx.send(Err(e));
                        return Ok(()); // reported through the setup channel
                    }
                };
                if go_rx.recv_timeout(STEP_TIMEOUT).is_err() {
                    return Ok(()); // aborted: another racer failed
                }
                control::send(&Message::Ready {
                    name: racer.name.to_string(),
                    cpu: pin::current_cpu(),
                    tid: pin::tid(),
                });
                let _ = ready_tx.send(());
                match gate {
                    Some(g) => g.wait(i, mode.gate_timeout)?,
                    None => {
                        barrier.wait();
                    }
                }
                action()
            };
            let spawned = thread::Builder::new()
                .name(racer.name.to_string())
                .spawn_scoped(s, body);
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    failure = Some(format!("spawn {}: {e}", racer.name));
                    break;
                }
            }
            match setup_rx.recv_timeout(STEP_TIMEOUT) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some(format!("{}: setup-timeout", racer.name)),
            }
            if failure.is_some() {
                break;
            }
        }
        if let Some(e) = failure {
            drop(go); // releases every waiting racer without a start
            for h in handles {
                let _ = h.join();
            }
            return Err(e);
        }
        if let Some(g) = gate {
            for (i, name) in names.iter().enumerate() {
                g.announce(i, name);
            }
        }
        let mut result = Ok(());
        for (i, tx) in go.iter_mut().enumerate() {
            let started = tx.take().is_some_and(|tx| tx.send(()).is_ok());
            if !started || ready_rx.recv_timeout(STEP_TIMEOUT).is_err() {
                result = Err(format!("{}: ready-timeout", names[i]));
                break;
            }
        }
        drop(go);
        for h in handles {
            let joined = h
                .join()
                .unwrap_or_else(|_| Err("racer-thread-panicked".into()));
            if result.is_ok() {
                result = joined;
            }
        }
        result
    })
}
