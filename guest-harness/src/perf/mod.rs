//! `mode perf`: mm microbenchmarks timed inside the guest, one `SAMPLE` per repetition.
//!
//! Every benchmark runs once per requested thread count: `t` threads, thread `i` pinned to
//! CPU `i`, each doing the same work on its own memory in one shared mm (so `t > 1` also
//! measures contention on the mm's locks). A repetition starts all threads at once behind
//! a barrier; its time is the slowest thread's and its operations are all threads' sum.
//! Only the part a benchmark wraps in [`Timer::time`] counts: set-up and tear-down are
//! left out. The clock is the guest's CLOCK_MONOTONIC, so under QEMU's icount it counts
//! instructions executed. See docs/perf.md.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use control_proto::Message;

use crate::arch;
use crate::control;
use crate::error::Res;
use crate::job::Params;
use crate::pin;

mod benches;

/// How long the boot clocksource may take to be replaced (see `system::settle_clocksource`).
const CLOCKSOURCE_BOUND: Duration = Duration::from_secs(15);
/// Idle time before a repetition's timed part: a few scheduler ticks and RCU grace periods.
const SETTLE: Duration = Duration::from_millis(30);
/// Most repetitions (and warm-ups) one benchmark may be asked for.
const MAX_REPS: u64 = 1000;

/// Accumulates the time of the measured parts of one repetition.
#[derive(Default)]
pub struct Timer {
    total: Duration,
    settled: bool,
}

impl Timer {
    /// Run `f`, counting its duration. The first call of a repetition idles for
    /// [`SETTLE`] first, after the benchmark's set-up: the deferred work of what ran
    /// before (RCU callbacks, vmstat and LRU drains, above all those of the set-up's own
    /// page faults) runs then rather than inside the timed part. Otherwise a kernel with
    /// slower set-up faults leaves less of that work for the timed part and shows as
    /// faster on benchmarks it does not change. Free under icount, where an idle guest
    /// skips to its next timer.
    pub fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        if !self.settled {
            std::thread::sleep(SETTLE);
            self.settled = true;
        }
        let start = Instant::now();
        let out = f();
        self.total += start.elapsed();
        out
    }
}

/// What a benchmark thread knows about itself.
pub struct Ctx {
    /// 0-based index among the repetition's threads (also its CPU).
    pub thread: usize,
    /// How many threads run this repetition.
    pub threads: usize,
}

/// One repetition of a benchmark on one thread: returns the operations it timed.
pub type BenchFn = fn(&mut Timer, &Ctx) -> Res<u64>;

/// What one thread measured in one repetition.
type ThreadSample = Res<(Duration, u64)>;

/// The perf job's parameters.
struct Plan {
    benches: Vec<(&'static str, BenchFn)>,
    threads: Vec<usize>,
    reps: u32,
    warmup: u32,
}

fn plan(mut params: Params) -> Res<Plan> {
    let list = |v: Option<String>, default: &str| {
        v.unwrap_or_else(|| default.to_string())
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let all = benches::ALL
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(",");
    let benches = list(params.take("benches"), &all)
        .iter()
        .map(|name| {
            benches::ALL
                .iter()
                .find(|(n, _)| n == name)
                .copied()
                .ok_or_else(|| format!("param benches: unknown benchmark {name:?} (known: {all})"))
        })
        .collect::<Res<Vec<_>>>()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = list(params.take("threads"), "1")
        .iter()
        .map(|t| match t.parse::<usize>() {
            Ok(n) if (1..=cpus).contains(&n) => Ok(n),
            _ => Err(format!(
                "param threads: {t:?} is not a thread count between 1 and the guest's {cpus} CPUs"
            )),
        })
        .collect::<Res<Vec<_>>>()?;
    let reps = params.take_u64("reps", 5)?;
    let warmup = params.take_u64("warmup", 1)?;
    if !(1..=MAX_REPS).contains(&reps) || warmup > MAX_REPS {
        return Err(format!(
            "param reps {reps} / warmup {warmup}: want 1..={MAX_REPS} repetitions and at most {MAX_REPS} warm-ups"
        ));
    }
    params.finish()?;
    if benches.is_empty() || threads.is_empty() {
        return Err("perf job with no benchmark or no thread count".into());
    }
    Ok(Plan {
        benches,
        threads,
        reps: reps as u32,
        warmup: warmup as u32,
    })
}

/// THPs only where a benchmark asks for them (MADV_HUGEPAGE). Needed because 6.12 turns
/// THP off at boot on machines with less than 512 MiB of RAM (`hugepage_init`), whatever
/// the Kconfig default; a fixed setting also keeps both kernels of a comparison alike.
const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// Run the perf job. `Ok(0)` once every sample was sent; a benchmark that fails ends the job.
pub fn run(params: Params) -> Res<i32> {
    let plan = plan(params)?;
    crate::mem::check_page_size()?;
    std::fs::write(THP_ENABLED, "madvise")
        .map_err(|e| crate::error::describe(&format!("write {THP_ENABLED}"), &e))?;
    // A jiffies clocksource (x86: TSC calibration failed) would round every timing to a tick.
    let clocksource = crate::system::settle_clocksource(CLOCKSOURCE_BOUND)?;
    if clocksource != arch::PERF_CLOCKSOURCE {
        return Err(format!(
            "perf needs the {} clocksource, the guest uses {clocksource:?}: {}",
            arch::PERF_CLOCKSOURCE,
            arch::PERF_CLOCKSOURCE_HINT
        ));
    }
    for &(name, bench) in &plan.benches {
        for &threads in &plan.threads {
            let label = format!("{name}.t{threads}");
            control::phase(&label);
            run_bench(&label, bench, threads, &plan)?;
        }
    }
    Ok(0)
}

/// `warmup` untimed and `reps` timed repetitions of `bench` on `threads` pinned threads.
fn run_bench(label: &str, bench: BenchFn, threads: usize, plan: &Plan) -> Res<()> {
    let total = plan.warmup + plan.reps;
    // The coordinator (this thread) and every worker meet three times per repetition: to
    // start together, when all have stored their sample, and after the coordinator decided
    // whether this was the last one.
    let barrier = Arc::new(Barrier::new(threads + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let slots: Arc<Mutex<Vec<ThreadSample>>> = Arc::new(Mutex::new(Vec::new()));
    let workers = (0..threads)
        .map(|thread| {
            let (barrier, stop, slots) = (barrier.clone(), stop.clone(), slots.clone());
            std::thread::spawn(move || {
                let ctx = Ctx { thread, threads };
                let pinned = pin::pin_to(thread);
                for _ in 0..total {
                    barrier.wait();
                    let sample = pinned.clone().and_then(|()| {
                        let mut timer = Timer::default();
                        bench(&mut timer, &ctx).map(|ops| (timer.total, ops))
                    });
                    slots.lock().unwrap_or_else(|p| p.into_inner()).push(sample);
                    barrier.wait();
                    // The coordinator decides between the second and the third barrier:
                    // every thread and the coordinator read the same value and leave together.
                    barrier.wait();
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
            })
        })
        .collect::<Vec<_>>();
    let mut failure = None;
    for rep in 0..total {
        barrier.wait();
        barrier.wait();
        let samples = std::mem::take(&mut *slots.lock().unwrap_or_else(|p| p.into_inner()));
        match combine(samples) {
            Ok((ns, ops)) if rep >= plan.warmup => control::send(&Message::Sample {
                bench: label.to_string(),
                rep: rep - plan.warmup + 1,
                ns,
                ops,
            }),
            Ok(_) => {}
            Err(e) => failure = Some(format!("{label}: {e}")),
        }
        if failure.is_some() || rep + 1 == total {
            stop.store(true, Ordering::SeqCst);
        }
        barrier.wait();
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    for w in workers {
        w.join()
            .map_err(|_| format!("{label}: a benchmark thread panicked"))?;
    }
    failure.map_or(Ok(()), Err)
}

/// One repetition's sample from its threads': the slowest time, the summed operations.
fn combine(samples: Vec<ThreadSample>) -> Res<(u64, u64)> {
    let mut ns = 0u64;
    let mut ops = 0u64;
    for s in samples {
        let (d, n) = s?;
        ns = ns.max(d.as_nanos().min(u64::MAX as u128) as u64);
        ops += n;
    }
    if ops == 0 {
        return Err("the repetition timed no operation".into());
    }
    Ok((ns, ops))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_takes_known_benchmarks_and_refuses_the_rest() {
        let p = plan(Params::from_pairs(&[
            ("benches", "fork,mmap-munmap"),
            ("threads", "1"),
            ("reps", "3"),
        ]))
        .unwrap();
        assert_eq!(
            p.benches.iter().map(|b| b.0).collect::<Vec<_>>(),
            ["fork", "mmap-munmap"]
        );
        assert_eq!((p.reps, p.warmup), (3, 1));
        assert!(plan(Params::from_pairs(&[("benches", "nope")])).is_err());
        assert!(plan(Params::from_pairs(&[("threads", "0")])).is_err());
        assert!(plan(Params::from_pairs(&[("reps", "0")])).is_err());
        assert!(plan(Params::from_pairs(&[("colour", "red")])).is_err());
    }

    #[test]
    fn a_repetition_takes_the_slowest_thread_and_all_operations() {
        let s = vec![
            Ok((Duration::from_nanos(50), 10)),
            Ok((Duration::from_nanos(70), 10)),
        ];
        assert_eq!(combine(s), Ok((70, 20)));
        assert!(combine(vec![Ok((Duration::from_nanos(5), 0))]).is_err());
        assert!(combine(vec![Err("boom".into())]).is_err());
    }

    #[test]
    fn a_host_run_of_cheap_benchmarks_sends_samples() {
        // The coordinator/worker protocol on the host: no deadlock, one sample per rep.
        let plan = Plan {
            benches: vec![],
            threads: vec![2],
            reps: 2,
            warmup: 1,
        };
        fn cheap(t: &mut Timer, _: &Ctx) -> Res<u64> {
            t.time(|| std::hint::black_box(1 + 1));
            Ok(1)
        }
        fn failing(_: &mut Timer, ctx: &Ctx) -> Res<u64> {
            if ctx.thread == 1 {
                Err("no".into())
            } else {
                Ok(1)
            }
        }
        run_bench("cheap.t2", cheap, 2, &plan).unwrap();
        assert!(run_bench("failing.t2", failing, 2, &plan).is_err());
    }
}
