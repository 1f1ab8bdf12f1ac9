//! The classic suite of a lock crate, run against `SpinLock` and `RawSpinLock` (the latter also
//! through `lock_api::Mutex`): modelled on what std's `Mutex`, parking_lot and spin test.
//!
//! Threads are ordered with barriers and channels, never with sleeps, and nothing asserts on
//! timing. Stress counts shrink under Miri so that `cargo +nightly miri test --test spin_lock`
//! stays within minutes.
//!
//! Panics in these tests are raised with `panic::resume_unwind`, which unwinds exactly like
//! `panic!` but skips the panic hook, so the expected panics print nothing.

#![cfg(not(loom))]

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
#[cfg(feature = "std")]
use std::time::{Duration, Instant};

#[cfg(feature = "std")]
use fencelock::Yield;
use fencelock::{Adaptive, MappedSpinLockGuard, RawSpinLock, Relax, Spin, SpinLock, SpinLockGuard};

/// Threads in the stress tests: more than the 2 cores of the machine, so holders get preempted
/// and waiters really wait.
const THREADS: usize = if cfg!(miri) { 4 } else { 8 };
/// Critical sections per thread in the stress tests.
const ITERS: usize = if cfg!(miri) { 100 } else { 10_000 };

/// Unwinds the current thread without running the panic hook (nothing printed).
fn quiet_panic() -> ! {
    panic::resume_unwind(Box::new("expected panic"))
}

// ---------------------------------------------------------------------------------------------
// Basics
// ---------------------------------------------------------------------------------------------

#[test]
fn smoke() {
    let lock = SpinLock::new(());
    drop(lock.lock());
    drop(lock.lock());
    assert!(!lock.is_locked());
}

#[test]
fn lock_gives_access_and_release_unlocks() {
    let lock = SpinLock::new(1);
    {
        let mut guard = lock.lock();
        assert!(lock.is_locked());
        *guard += 1;
    }
    assert!(!lock.is_locked());
    assert_eq!(*lock.lock(), 2);
}

#[test]
fn new_infers_default_strategy_without_annotation() {
    let lock = SpinLock::new(0);
    *lock.lock() += 1;
    // The default strategy is `Adaptive`, as `Vec::new` picks the global allocator.
    let named: &SpinLock<i32, Adaptive> = &lock;
    assert_eq!(*named.lock(), 1);
}

static ORDERS: SpinLock<u64> = SpinLock::new(0);
static SPIN_ORDERS: SpinLock<u64, Spin> = SpinLock::with_relax(0, Spin);
static RAW: RawSpinLock = RawSpinLock::new();

#[test]
fn statics_built_by_const_fn() {
    thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..ITERS {
                    *ORDERS.lock() += 1;
                    *SPIN_ORDERS.lock() += 2;
                }
            });
        }
    });
    assert_eq!(*ORDERS.lock(), (THREADS * ITERS) as u64);
    assert_eq!(*SPIN_ORDERS.lock(), (2 * THREADS * ITERS) as u64);

    RAW.lock();
    assert!(RAW.is_locked());
    assert!(!RAW.try_lock());
    // SAFETY: this thread took `RAW` just above, and no other test uses it.
    unsafe { RAW.unlock() };
    assert!(!RAW.is_locked());
}

#[test]
fn into_inner() {
    let lock = SpinLock::new(vec![1, 2]);
    lock.lock().push(3);
    assert_eq!(lock.into_inner(), [1, 2, 3]);
}

#[test]
fn get_mut() {
    let mut lock = SpinLock::new(10);
    *lock.get_mut() += 5;
    assert!(!lock.is_locked());
    assert_eq!(*lock.lock(), 15);
    assert_eq!(lock.into_inner(), 15);
}

/// Counts how many times it has been dropped.
struct DropCounter(Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Relaxed);
    }
}

#[test]
fn into_inner_drops_the_value_exactly_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    let lock = SpinLock::new(DropCounter(Arc::clone(&drops)));
    drop(lock.lock());
    assert_eq!(drops.load(Relaxed), 0);
    let inner = lock.into_inner();
    assert_eq!(
        drops.load(Relaxed),
        0,
        "into_inner must not drop the value it returns"
    );
    drop(inner);
    assert_eq!(drops.load(Relaxed), 1);
}

#[test]
fn dropping_the_lock_drops_the_value_exactly_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    let lock = SpinLock::with_relax(DropCounter(Arc::clone(&drops)), Spin);
    drop(lock.lock());
    assert_eq!(
        drops.load(Relaxed),
        0,
        "a guard's drop must not drop the data"
    );
    drop(lock);
    assert_eq!(drops.load(Relaxed), 1);
}

#[test]
fn replacing_the_value_through_the_guard_drops_the_old_one() {
    let drops = Arc::new(AtomicUsize::new(0));
    let lock = SpinLock::new(DropCounter(Arc::clone(&drops)));
    *lock.lock() = DropCounter(Arc::clone(&drops));
    assert_eq!(drops.load(Relaxed), 1);
    drop(lock);
    assert_eq!(drops.load(Relaxed), 2);
}

#[test]
fn default_and_from() {
    let lock: SpinLock<Vec<u8>> = SpinLock::default();
    assert!(lock.lock().is_empty());
    let lock = SpinLock::from(String::from("IBM"));
    assert_eq!(*lock.lock(), "IBM");
    let lock: SpinLock<u8> = 7.into();
    assert_eq!(lock.into_inner(), 7);
    let raw: RawSpinLock<Spin> = RawSpinLock::default();
    assert!(!raw.is_locked());
}

#[test]
fn debug_shows_the_data_or_locked() {
    let lock = SpinLock::new(vec![1, 2]);
    assert_eq!(format!("{lock:?}"), "SpinLock { data: [1, 2], .. }");
    let guard = lock.lock();
    assert_eq!(format!("{lock:?}"), "SpinLock { data: <locked>, .. }");
    // Formatting a held lock must not have touched it.
    assert!(lock.is_locked());
    assert_eq!(format!("{guard:?}"), "[1, 2]");
    drop(guard);
    assert_eq!(format!("{lock:?}"), "SpinLock { data: [1, 2], .. }");
    // Debug of a free lock takes and releases it.
    assert!(!lock.is_locked());
}

#[test]
fn debug_of_raw_lock_shows_state() {
    let raw: RawSpinLock = RawSpinLock::new();
    assert_eq!(format!("{raw:?}"), "RawSpinLock { locked: false }");
    raw.lock();
    assert_eq!(format!("{raw:?}"), "RawSpinLock { locked: true }");
    // SAFETY: taken just above.
    unsafe { raw.unlock() };
}

#[test]
fn guard_display_and_debug_forward_to_the_data() {
    let lock = SpinLock::new(String::from("MSFT"));
    let guard = lock.lock();
    assert_eq!(format!("{guard}"), "MSFT");
    assert_eq!(format!("{guard:?}"), "\"MSFT\"");
    assert_eq!(
        format!("{guard:>6}"),
        "  MSFT",
        "format options reach the data"
    );
}

#[test]
fn one_byte_of_lock_state() {
    use std::mem::size_of;
    assert_eq!(size_of::<SpinLock<()>>(), 1);
    assert_eq!(size_of::<SpinLock<(), Spin>>(), 1);
    #[cfg(feature = "std")]
    assert_eq!(size_of::<SpinLock<(), Yield>>(), 1);
    assert_eq!(size_of::<SpinLock<u8>>(), 2);
    assert_eq!(size_of::<RawSpinLock>(), 1);
    assert_eq!(size_of::<RawSpinLock<Spin>>(), 1);
}

// ---------------------------------------------------------------------------------------------
// try_lock
// ---------------------------------------------------------------------------------------------

#[test]
fn try_lock_fails_while_held_by_this_thread() {
    let lock = SpinLock::new(5);
    let guard = lock.lock();
    assert!(lock.try_lock().is_none());
    assert!(
        lock.try_lock().is_none(),
        "a failed try_lock must not release the lock"
    );
    assert!(lock.is_locked());
    drop(guard);
    let guard = lock.try_lock().expect("free after the guard is dropped");
    assert_eq!(*guard, 5);
    assert!(
        lock.try_lock().is_none(),
        "a try_lock guard holds the lock too"
    );
}

#[test]
fn try_lock_fails_from_another_thread_while_held() {
    let lock = SpinLock::new(0);
    let guard = lock.lock();
    thread::scope(|s| {
        s.spawn(|| {
            assert!(lock.is_locked());
            assert!(lock.try_lock().is_none());
        });
    });
    drop(guard);
    thread::scope(|s| {
        s.spawn(|| *lock.try_lock().expect("free after the holder released it") += 1);
    });
    assert_eq!(lock.into_inner(), 1);
}

/// Thread A holds the lock, thread B tries while A holds it, A releases, B tries again: channels
/// order every step, so the outcome of each `try_lock` is fixed.
#[test]
fn try_lock_between_two_other_threads() {
    let lock = SpinLock::new(0);
    let (to_b, from_a) = mpsc::channel();
    let (to_a, from_b) = mpsc::channel();
    let lock = &lock;
    thread::scope(|s| {
        s.spawn(move || {
            let mut guard = lock.lock();
            *guard = 1;
            to_b.send("held").unwrap();
            assert_eq!(from_b.recv().unwrap(), "release");
            drop(guard);
            to_b.send("released").unwrap();
        });
        s.spawn(move || {
            assert_eq!(from_a.recv().unwrap(), "held");
            assert!(lock.try_lock().is_none());
            to_a.send("release").unwrap();
            assert_eq!(from_a.recv().unwrap(), "released");
            let mut guard = lock.try_lock().expect("A released the lock");
            assert_eq!(*guard, 1, "B sees A's write");
            *guard = 2;
        });
    });
    assert_eq!(*lock.lock(), 2);
}

/// Every thread only ever `try_lock`s; the data must count exactly the successful attempts.
#[test]
fn contended_try_lock_counts_only_successes() {
    let lock = SpinLock::new(0_usize);
    let holders = AtomicUsize::new(0);
    let barrier = Barrier::new(THREADS);
    let successes: usize = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let mut won = 0;
                    for _ in 0..ITERS {
                        if let Some(mut guard) = lock.try_lock() {
                            assert_eq!(holders.fetch_add(1, Relaxed), 0, "two holders at once");
                            *guard += 1;
                            holders.fetch_sub(1, Relaxed);
                            won += 1;
                        }
                    }
                    won
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert!(successes > 0);
    assert_eq!(lock.into_inner(), successes);
}

// ---------------------------------------------------------------------------------------------
// Contention
// ---------------------------------------------------------------------------------------------

/// `THREADS` threads, released together by a barrier, each take the lock `ITERS` times and add
/// one. A second counter checks that no two threads are ever inside at once, and the total checks
/// that each holder sees every write of the holders before it.
fn many_threads_increment<R: Relax>(lock: SpinLock<usize, R>) {
    let holders = AtomicUsize::new(0);
    let barrier = Barrier::new(THREADS);
    thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                barrier.wait();
                for _ in 0..ITERS {
                    let mut guard = lock.lock();
                    assert_eq!(holders.fetch_add(1, Relaxed), 0, "two holders at once");
                    *guard += 1;
                    holders.fetch_sub(1, Relaxed);
                }
            });
        }
    });
    assert!(!lock.is_locked());
    assert_eq!(lock.into_inner(), THREADS * ITERS);
}

#[test]
fn many_threads_increment_backoff() {
    many_threads_increment(SpinLock::new(0));
}

#[test]
fn many_threads_increment_spin() {
    many_threads_increment(SpinLock::with_relax(0, Spin));
}

#[cfg(feature = "std")]
#[test]
fn many_threads_increment_yield() {
    many_threads_increment(SpinLock::with_relax(0, Yield));
}

/// A user-defined strategy that is neither `Send` nor `Sync`: the lock stays both, since the
/// strategy lives in the type only.
struct NotSendRelax(PhantomData<*const ()>);

impl Relax for NotSendRelax {
    fn relax(attempt: u32) {
        if attempt.is_multiple_of(2) {
            std::hint::spin_loop();
        } else {
            thread::yield_now();
        }
    }
}

#[test]
fn many_threads_increment_custom_strategy() {
    many_threads_increment(SpinLock::with_relax(0, NotSendRelax(PhantomData)));
}

/// A waiter blocked in `lock()` gets the lock once the holder releases it, and sees what the
/// holder wrote just before releasing.
#[test]
fn waiter_gets_the_lock_and_sees_the_holders_writes() {
    let lock = SpinLock::new(0);
    let (to_holder, waiting) = mpsc::channel();
    let mut guard = lock.lock();
    let lock = &lock;
    thread::scope(|s| {
        // `move`: if the waiter fails before sending, the sender drops and `recv` fails too.
        s.spawn(move || {
            assert!(lock.is_locked());
            to_holder.send(()).unwrap();
            let guard = lock.lock();
            assert_eq!(*guard, 42, "the waiter ran before the holder released");
        });
        waiting.recv().unwrap();
        *guard = 42;
        drop(guard);
    });
    assert_eq!(*lock.lock(), 42);
}

#[test]
// Outer then inner, whatever their addresses: a fixed hierarchy, deadlock-free, but lockdep
// checks the global (address) order and reports it whenever the inner lock sits lower.
#[cfg_attr(
    feature = "lockdep",
    ignore = "nests locks in a hierarchy, not in address order"
)]
fn nested_arc_of_locks() {
    let inner = Arc::new(SpinLock::new(1));
    let outer = Arc::new(SpinLock::new(Arc::clone(&inner)));
    let outer2 = Arc::clone(&outer);
    thread::spawn(move || {
        let lock = outer2.lock();
        let mut lock2 = lock.lock();
        assert_eq!(*lock2, 1);
        *lock2 = 2;
    })
    .join()
    .unwrap();
    assert_eq!(*inner.lock(), 2);
    assert_eq!(*outer.lock().lock(), 2);
}

#[cfg(feature = "send_guard")]
#[test]
fn guard_moved_to_another_thread_releases_there() {
    let lock = SpinLock::new(0);
    let mut guard = lock.lock();
    *guard = 3;
    thread::scope(|s| {
        s.spawn(move || {
            assert_eq!(*guard, 3);
            drop(guard);
        });
    });
    assert!(!lock.is_locked());
    assert_eq!(*lock.try_lock().unwrap(), 3);
}

#[test]
fn forgotten_guard_leaves_the_lock_held() {
    let lock = SpinLock::new(0);
    std::mem::forget(lock.lock());
    assert!(lock.is_locked());
    assert!(lock.try_lock().is_none());
}

// ---------------------------------------------------------------------------------------------
// Panics: no poisoning
// ---------------------------------------------------------------------------------------------

#[test]
fn panic_while_holding_releases_the_lock_without_poisoning() {
    let lock = SpinLock::new(vec![1]);
    thread::scope(|s| {
        let panicker = s.spawn(|| {
            let mut guard = lock.lock();
            guard.push(2);
            quiet_panic();
        });
        assert!(panicker.join().is_err());
    });
    assert!(!lock.is_locked());
    let guard = lock
        .try_lock()
        .expect("the panicking thread's guard released the lock");
    assert_eq!(
        *guard,
        [1, 2],
        "the data is as the panicking thread left it"
    );
}

#[test]
fn catch_unwind_in_the_same_thread() {
    let lock = SpinLock::new(vec![1]);
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut guard = lock.lock();
        guard.push(2);
        quiet_panic();
    }));
    assert!(result.is_err());
    assert!(!lock.is_locked());
    let mut guard = lock.try_lock().expect("released during the unwind");
    assert_eq!(*guard, [1, 2]);
    guard.push(3);
    drop(guard);
    assert_eq!(lock.into_inner(), [1, 2, 3]);
}

/// std's `test_mutex_arc_access_in_unwind`: a destructor running during an unwind takes the lock.
#[test]
fn access_during_unwind() {
    let lock = Arc::new(SpinLock::new(1));
    let lock2 = Arc::clone(&lock);
    let result = thread::spawn(move || {
        struct Unwinder {
            lock: Arc<SpinLock<i32>>,
        }
        impl Drop for Unwinder {
            fn drop(&mut self) {
                *self.lock.lock() += 1;
            }
        }
        let _unwinder = Unwinder { lock: lock2 };
        quiet_panic();
    })
    .join();
    assert!(result.is_err());
    assert_eq!(*lock.lock(), 2);
}

/// A panic while holding the guard, with a destructor (dropped after the guard) that takes the
/// same lock: the guard must have released it by then, or the destructor spins forever.
#[test]
fn guard_released_before_later_destructors_run() {
    struct Relocker<'a>(&'a SpinLock<u32>);
    impl Drop for Relocker<'_> {
        fn drop(&mut self) {
            *self.0.lock() += 10;
        }
    }
    let lock = SpinLock::new(0);
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let _relocker = Relocker(&lock);
        let mut guard = lock.lock();
        *guard += 1;
        quiet_panic();
    }));
    assert!(result.is_err());
    assert_eq!(lock.into_inner(), 11);
}

// ---------------------------------------------------------------------------------------------
// Unsized data
// ---------------------------------------------------------------------------------------------

#[test]
fn unsized_slice() {
    let lock: &SpinLock<[u32]> = &SpinLock::new([1, 2, 3]);
    {
        let mut guard = lock.lock();
        guard[0] = 4;
        guard[2] = 5;
    }
    assert_eq!(*lock.lock(), [4, 2, 5]);
    assert_eq!(lock.try_lock().unwrap().len(), 3);
    assert_eq!(format!("{lock:?}"), "SpinLock { data: [4, 2, 5], .. }");
}

#[test]
fn unsized_slice_get_mut() {
    let mut owned = SpinLock::new([1_u32, 2, 3]);
    let lock: &mut SpinLock<[u32]> = &mut owned;
    lock.get_mut().reverse();
    assert_eq!(owned.into_inner(), [3, 2, 1]);
}

trait Book: Send {
    fn buy(&mut self) -> Option<u32>;
}

struct Stock {
    units: Vec<u32>,
}

impl Book for Stock {
    fn buy(&mut self) -> Option<u32> {
        self.units.pop()
    }
}

#[test]
fn unsized_trait_object() {
    let boxed: Box<SpinLock<dyn Book>> = Box::new(SpinLock::new(Stock { units: vec![7, 8] }));
    let shared: Arc<SpinLock<dyn Book>> = Arc::from(boxed);
    let bought: Vec<Option<u32>> = thread::scope(|s| {
        let buyers: Vec<_> = (0..3).map(|_| s.spawn(|| shared.lock().buy())).collect();
        buyers.into_iter().map(|b| b.join().unwrap()).collect()
    });
    let mut sold: Vec<u32> = bought.into_iter().flatten().collect();
    sold.sort_unstable();
    assert_eq!(sold, [7, 8], "each unit sold exactly once");
    assert_eq!(shared.lock().buy(), None);
}

#[test]
fn unsized_trait_object_with_other_strategy() {
    let lock: Box<SpinLock<dyn fmt::Display, Spin>> = Box::new(SpinLock::with_relax(12, Spin));
    assert_eq!(format!("{}", lock.lock()), "12");
}

// ---------------------------------------------------------------------------------------------
// Send / Sync
// ---------------------------------------------------------------------------------------------

fn assert_send<T: ?Sized + Send>() {}
fn assert_sync<T: ?Sized + Sync>() {}

/// Fails to compile if `$t` implements `$trait`: with the trait, both impls apply and the `_`
/// is ambiguous; without it, only the first does.
macro_rules! assert_not_impl {
    ($t:ty: $trait:path) => {{
        trait AmbiguousIfImpl<A> {
            fn some_item() {}
        }
        impl<T: ?Sized> AmbiguousIfImpl<()> for T {}
        impl<T: ?Sized + $trait> AmbiguousIfImpl<u8> for T {}
        <$t as AmbiguousIfImpl<_>>::some_item();
    }};
}

type Guard<T, R = Adaptive> = SpinLockGuard<'static, T, R>;
type Mapped<T, R = Adaptive> = MappedSpinLockGuard<'static, T, R>;

#[test]
fn send_and_sync_as_std_mutex() {
    // The lock: Send + Sync iff T: Send, like std's Mutex.
    assert_send::<SpinLock<u32>>();
    assert_sync::<SpinLock<u32>>();
    assert_send::<SpinLock<Cell<u8>>>();
    assert_sync::<SpinLock<Cell<u8>>>(); // Send-but-not-Sync data: the lock makes it shareable
    assert_send::<SpinLock<[u8]>>();
    assert_sync::<SpinLock<dyn Book>>();
    assert_not_impl!(SpinLock<Rc<u8>>: Send);
    assert_not_impl!(SpinLock<Rc<u8>>: Sync);
    assert_not_impl!(SpinLock<*const u8>: Sync);

    // The strategy lives in the type only: it never affects Send/Sync.
    assert_send::<SpinLock<u32, NotSendRelax>>();
    assert_sync::<SpinLock<u32, NotSendRelax>>();
    assert_send::<RawSpinLock<NotSendRelax>>();
    assert_sync::<RawSpinLock<NotSendRelax>>();
    assert_sync::<Guard<u32, NotSendRelax>>();
    assert_sync::<Mapped<u32, NotSendRelax>>();

    // The guards: Sync iff T: Sync (they hand out &T to whoever shares them).
    assert_sync::<Guard<u32>>();
    assert_sync::<Guard<Vec<u8>>>();
    assert_sync::<Mapped<[u8]>>();
    assert_not_impl!(Guard<Cell<u8>>: Sync);
    assert_not_impl!(Guard<Rc<u8>>: Sync);
    assert_not_impl!(Mapped<Cell<u8>>: Sync);
    assert_not_impl!(Guard<Rc<u8>>: Send);
    assert_not_impl!(Mapped<Rc<u8>>: Send);
}

/// Without `send_guard` the guards stay on their thread, as std's and parking_lot's.
#[cfg(not(feature = "send_guard"))]
#[test]
fn guards_are_not_send_by_default() {
    assert_not_impl!(Guard<u32>: Send);
    assert_not_impl!(Guard<u32, NotSendRelax>: Send);
    assert_not_impl!(Mapped<u32>: Send);
    #[cfg(feature = "std")]
    assert_not_impl!(fencelock::KeyGuard<'static>: Send);
}

/// With `send_guard` they are Send iff T: Send (the lock may be released from any thread).
#[cfg(feature = "send_guard")]
#[test]
fn guards_are_send_with_send_guard() {
    assert_send::<Guard<u32>>();
    assert_send::<Guard<Cell<u8>>>();
    assert_send::<Guard<u32, NotSendRelax>>();
    assert_send::<Mapped<Cell<u8>>>();
    #[cfg(feature = "std")]
    assert_send::<fencelock::KeyGuard<'static>>();
}

// ---------------------------------------------------------------------------------------------
// Timed waits
// ---------------------------------------------------------------------------------------------

/// Long enough that a test never reaches it unless the lock is broken: results never depend on
/// how fast the machine is.
#[cfg(feature = "std")]
const FOREVER: Duration = Duration::from_secs(60);

#[cfg(feature = "std")]
#[test]
fn try_lock_for_takes_a_free_lock() {
    let lock = SpinLock::new(1);
    *lock.try_lock_for(Duration::ZERO).expect("free") += 1;
    *lock.try_lock_for(FOREVER).expect("free") += 1;
    *lock.try_lock_for(Duration::MAX).expect("free") += 1;
    *lock.try_lock_until(Instant::now()).expect("free") += 1;
    assert!(!lock.is_locked());
    assert_eq!(lock.into_inner(), 5);
}

#[cfg(feature = "std")]
#[test]
fn try_lock_for_gives_up_while_held() {
    let lock = SpinLock::with_relax(0, Spin);
    let held = lock.lock();
    assert!(lock.try_lock_for(Duration::ZERO).is_none());
    assert!(lock.try_lock_for(Duration::from_micros(200)).is_none());
    assert!(lock.try_lock_until(Instant::now()).is_none());
    let past = Instant::now().checked_sub(Duration::from_secs(1));
    assert!(past.is_none_or(|past| lock.try_lock_until(past).is_none()));
    thread::scope(|s| {
        s.spawn(|| assert!(lock.try_lock_for(Duration::from_micros(200)).is_none()));
    });
    assert!(
        lock.is_locked(),
        "a failed timed wait must not release the lock"
    );
    drop(held);
}

#[cfg(feature = "std")]
#[test]
fn try_lock_for_returns_after_its_timeout() {
    let lock = SpinLock::new(());
    let _held = lock.lock();
    let timeout = Duration::from_millis(2);
    let started = Instant::now();
    assert!(lock.try_lock_for(timeout).is_none());
    // A lower bound only: the wait never ends early (how late it ends is not asserted).
    assert!(started.elapsed() >= timeout);
}

/// A waiter in `try_lock_for` / `try_lock_until` gets the lock when the holder releases it, and
/// sees what the holder wrote.
#[cfg(feature = "std")]
#[test]
fn timed_waiter_gets_the_lock_when_released() {
    for until in [false, true] {
        let lock = SpinLock::new(0);
        let (to_holder, waiting) = mpsc::channel();
        let mut guard = lock.lock();
        let lock = &lock;
        thread::scope(|s| {
            s.spawn(move || {
                to_holder.send(()).unwrap();
                let got = if until {
                    lock.try_lock_until(Instant::now() + FOREVER)
                } else {
                    lock.try_lock_for(Duration::MAX)
                };
                assert_eq!(got.map(|g| *g), Some(42));
            });
            waiting.recv().unwrap();
            *guard = 42;
            drop(guard);
        });
    }
}

#[cfg(feature = "std")]
#[test]
fn timed_waits_are_mutually_exclusive() {
    let lock = SpinLock::new(0_usize);
    let holders = AtomicUsize::new(0);
    let barrier = Barrier::new(THREADS);
    let taken: usize = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (lock, holders, barrier) = (&lock, &holders, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let mut won = 0;
                    for i in 0..ITERS {
                        // Half wait "forever", half only a moment and may give up.
                        let timeout = if (t + i) % 2 == 0 {
                            FOREVER
                        } else {
                            Duration::from_nanos(50)
                        };
                        if let Some(mut guard) = lock.try_lock_for(timeout) {
                            assert_eq!(holders.fetch_add(1, Relaxed), 0, "two holders at once");
                            *guard += 1;
                            holders.fetch_sub(1, Relaxed);
                            won += 1;
                        }
                    }
                    won
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert!(taken >= THREADS * ITERS / 2);
    assert_eq!(lock.into_inner(), taken);
}

#[cfg(feature = "std")]
#[test]
fn raw_timed_waits() {
    let raw: RawSpinLock<Spin> = RawSpinLock::new();
    assert!(raw.try_lock_for(Duration::ZERO));
    assert!(!raw.try_lock_for(Duration::from_micros(100)));
    assert!(!raw.try_lock_until(Instant::now() + Duration::from_micros(100)));
    // SAFETY: taken above by this thread.
    unsafe { raw.unlock() };
    assert!(raw.try_lock_until(Instant::now()));
    // SAFETY: taken just above.
    unsafe { raw.unlock() };
}

// ---------------------------------------------------------------------------------------------
// Guards: map, try_map, leak, force_unlock, data_ptr
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Account {
    cash: i64,
    units: Vec<u32>,
}

fn account() -> SpinLock<Account> {
    SpinLock::new(Account {
        cash: 100,
        units: vec![1, 2, 3],
    })
}

#[test]
fn map_narrows_and_keeps_the_lock_held() {
    let lock = account();
    let mut cash = SpinLockGuard::map(lock.lock(), |a| &mut a.cash);
    *cash -= 40;
    assert!(lock.is_locked());
    assert!(lock.try_lock().is_none());
    assert_eq!(format!("{cash:?} {cash}"), "60 60");
    drop(cash);
    assert!(!lock.is_locked());
    assert_eq!(lock.lock().cash, 60);
}

#[test]
fn map_to_unsized_and_map_again() {
    let lock = account();
    let units: MappedSpinLockGuard<'_, [u32]> =
        SpinLockGuard::map(lock.lock(), |a| a.units.as_mut_slice());
    let mut last = MappedSpinLockGuard::map(units, |u| u.last_mut().unwrap());
    *last = 30;
    assert!(lock.is_locked());
    drop(last);
    assert!(!lock.is_locked());
    assert_eq!(lock.lock().units, [1, 2, 30]);
}

#[test]
fn try_map_gives_the_guard_back_on_none() {
    let lock = account();
    let guard = SpinLockGuard::try_map(lock.lock(), |a| a.units.get_mut(7)).unwrap_err();
    assert!(lock.is_locked(), "the returned guard still holds the lock");
    let mut first = SpinLockGuard::try_map(guard, |a| a.units.first_mut()).expect("present");
    *first = 10;
    let units = MappedSpinLockGuard::try_map(first, |_| None::<&mut u8>).unwrap_err();
    assert_eq!(*units, 10);
    let twice = MappedSpinLockGuard::try_map(units, |u| Some(u)).unwrap();
    drop(twice);
    assert!(!lock.is_locked());
    assert_eq!(lock.lock().units, [10, 2, 3]);
}

#[test]
fn panic_in_map_closure_releases_the_lock() {
    let lock = account();
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        SpinLockGuard::map(lock.lock(), |_: &mut Account| -> &mut i64 { quiet_panic() })
    }));
    assert!(result.is_err());
    assert!(!lock.is_locked());
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let cash = SpinLockGuard::map(lock.lock(), |a| &mut a.cash);
        MappedSpinLockGuard::map(cash, |_| -> &mut u8 { quiet_panic() })
    }));
    assert!(result.is_err());
    assert!(!lock.is_locked());
}

#[test]
fn mapped_guards_under_contention() {
    let lock = SpinLock::new((0_usize, 0_usize));
    thread::scope(|s| {
        for t in 0..THREADS {
            let lock = &lock;
            s.spawn(move || {
                for _ in 0..ITERS {
                    if t % 2 == 0 {
                        *SpinLockGuard::map(lock.lock(), |p| &mut p.0) += 1;
                    } else {
                        let pair = SpinLockGuard::try_map(lock.lock(), |p| Some(p)).unwrap();
                        *MappedSpinLockGuard::map(pair, |p| &mut p.1) += 1;
                    }
                }
            });
        }
    });
    let (evens, odds) = lock.into_inner();
    assert_eq!(evens + odds, THREADS * ITERS);
}

#[test]
fn leak_keeps_the_lock_until_force_unlock() {
    let lock = SpinLock::new(vec![1]);
    let data: &mut Vec<i32> = SpinLockGuard::leak(lock.lock());
    data.push(2);
    assert!(lock.is_locked());
    assert!(lock.try_lock().is_none());
    // SAFETY: the leaked guard holds the lock and `data` is not used again.
    unsafe { lock.force_unlock() };
    assert!(!lock.is_locked());
    assert_eq!(*lock.lock(), [1, 2]);
}

#[test]
fn force_unlock_after_forget() {
    let lock = SpinLock::new(3);
    std::mem::forget(lock.lock());
    assert!(lock.is_locked());
    // SAFETY: the forgotten guard held the lock; nothing uses its data.
    unsafe { lock.force_unlock() };
    assert_eq!(*lock.try_lock().expect("released by force_unlock"), 3);
}

#[test]
fn data_ptr_points_at_the_data() {
    let lock = SpinLock::new(7_u64);
    let ptr = lock.data_ptr();
    {
        let mut guard = lock.lock();
        assert_eq!(ptr, &mut *guard as *mut u64);
        // SAFETY: the lock is held, and the write ends before the guard is used again.
        unsafe { *ptr = 8 };
    }
    assert_eq!(*lock.lock(), 8);
    let slice: &SpinLock<[u8]> = &SpinLock::new([1, 2]);
    assert_eq!(slice.data_ptr().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Fair unlock and bump
// ---------------------------------------------------------------------------------------------

#[test]
fn unlock_fair_and_bump_on_one_thread() {
    let lock = SpinLock::new(0);
    let mut guard = lock.lock();
    *guard += 1;
    SpinLockGuard::bump(&mut guard);
    assert!(lock.is_locked());
    *guard += 1;
    SpinLockGuard::unlock_fair(guard);
    assert!(!lock.is_locked());
    assert_eq!(*lock.lock(), 2);

    let raw: RawSpinLock<Spin> = RawSpinLock::new();
    raw.lock();
    // SAFETY: taken just above; held again after `bump`.
    unsafe { raw.bump() };
    assert!(raw.is_locked());
    // SAFETY: held by this thread.
    unsafe { raw.unlock_fair() };
    assert!(!raw.is_locked());
}

/// Threads that bump in the middle of their critical section: the lock is really released and
/// retaken (another thread may get in), and mutual exclusion holds on each side of the bump.
#[test]
fn bump_and_unlock_fair_under_contention() {
    let lock = SpinLock::new(0_usize);
    let holders = AtomicUsize::new(0);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (lock, holders) = (&lock, &holders);
            s.spawn(move || {
                for _ in 0..ITERS / 4 {
                    let mut guard = lock.lock();
                    assert_eq!(holders.fetch_add(1, Relaxed), 0, "two holders at once");
                    *guard += 1;
                    holders.fetch_sub(1, Relaxed);
                    SpinLockGuard::bump(&mut guard);
                    assert_eq!(holders.fetch_add(1, Relaxed), 0, "two holders at once");
                    *guard += 1;
                    holders.fetch_sub(1, Relaxed);
                    if t % 2 == 0 {
                        SpinLockGuard::unlock_fair(guard);
                    }
                }
            });
        }
    });
    assert_eq!(lock.into_inner(), 2 * THREADS * (ITERS / 4));
}

// ---------------------------------------------------------------------------------------------
// lock_api interop: one suite, run against lock_api 0.5 and (feature `lock_api_04`) 0.4
// ---------------------------------------------------------------------------------------------

/// The lock_api suite for one version of lock_api: `$api` is the crate, `$force_unlock` releases
/// a leaked `$api::Mutex<RawSpinLock, u32>` (0.5 hands it a guard token, 0.4 does not).
#[cfg(any(feature = "lock_api", feature = "lock_api_04"))]
macro_rules! lock_api_suite {
    ($module:ident, $api:ident, force_unlock: |$m:ident| $force_unlock:expr) => {
        mod $module {
            use super::*;
            use ::$api as api;

            type ApiMutex<T> = api::Mutex<RawSpinLock, T>;
            type ApiSpinMutex<T> = api::Mutex<RawSpinLock<Spin>, T>;

            static API_STATIC: ApiMutex<u32> = api::Mutex::new(0);

            #[test]
            fn mutex_across_threads() {
                let mutex = Arc::new(ApiMutex::new(0_usize));
                let barrier = Arc::new(Barrier::new(THREADS));
                let workers: Vec<_> = (0..THREADS)
                    .map(|_| {
                        let mutex = Arc::clone(&mutex);
                        let barrier = Arc::clone(&barrier);
                        thread::spawn(move || {
                            barrier.wait();
                            for _ in 0..ITERS {
                                *mutex.lock() += 1;
                            }
                        })
                    })
                    .collect();
                for worker in workers {
                    worker.join().unwrap();
                }
                assert!(!mutex.is_locked());
                assert_eq!(*mutex.lock(), THREADS * ITERS);
            }

            #[test]
            fn mutex_try_lock() {
                let mutex = ApiSpinMutex::new(String::from("GOOG"));
                let guard = mutex.lock();
                assert!(mutex.is_locked());
                assert!(mutex.try_lock().is_none());
                thread::scope(|s| {
                    s.spawn(|| assert!(mutex.try_lock().is_none()));
                });
                drop(guard);
                assert!(!mutex.is_locked());
                mutex.try_lock().expect("free").push('L');
                assert_eq!(mutex.into_inner(), "GOOGL");
            }

            #[test]
            fn static_leak_and_force_unlock() {
                *API_STATIC.lock() += 1;
                let leaked: &mut u32 = api::MutexGuard::leak(API_STATIC.lock());
                *leaked += 1;
                assert!(API_STATIC.is_locked());
                assert!(API_STATIC.try_lock().is_none());
                let $m = &API_STATIC;
                // SAFETY: the leaked guard holds the lock, its reference is not used again, and
                // `RawSpinLock`'s guard token is stateless; nobody else touches API_STATIC.
                unsafe { $force_unlock };
                assert!(!API_STATIC.is_locked());
                assert_eq!(*API_STATIC.lock(), 2);
            }

            #[test]
            fn guard_unlocked_and_map() {
                let mutex = ApiMutex::new((1_u32, 2_u32));
                let mut guard = mutex.lock();
                guard.0 = 10;
                api::MutexGuard::unlocked(&mut guard, || {
                    assert!(!mutex.is_locked());
                    *mutex.try_lock().expect("unlocked inside the closure") = (20, 30);
                });
                assert!(mutex.is_locked());
                let second = api::MutexGuard::map(guard, |pair| &mut pair.1);
                assert_eq!(*second, 30);
                drop(second);
                assert!(!mutex.is_locked());
            }

            #[cfg(feature = "std")]
            #[test]
            fn timed_lock() {
                let mutex = ApiMutex::new(5_u32);
                let guard = mutex.try_lock_for(FOREVER).expect("free");
                assert!(mutex.try_lock_for(Duration::ZERO).is_none());
                assert!(mutex.try_lock_for(Duration::from_micros(100)).is_none());
                assert!(mutex.try_lock_until(Instant::now()).is_none());
                thread::scope(|s| {
                    s.spawn(|| assert!(mutex.try_lock_for(Duration::from_micros(100)).is_none()));
                });
                drop(guard);
                assert_eq!(mutex.try_lock_until(Instant::now()).map(|g| *g), Some(5));
            }

            #[cfg(feature = "std")]
            #[test]
            fn timed_waiter_gets_the_lock() {
                let mutex = ApiMutex::new(0_u32);
                let (to_holder, waiting) = mpsc::channel();
                let mut guard = mutex.lock();
                let mutex = &mutex;
                thread::scope(|s| {
                    s.spawn(move || {
                        to_holder.send(()).unwrap();
                        assert_eq!(mutex.try_lock_for(FOREVER).map(|g| *g), Some(9));
                    });
                    waiting.recv().unwrap();
                    *guard = 9;
                    drop(guard);
                });
            }

            #[test]
            fn unlock_fair_and_bump() {
                let mutex = ApiMutex::new(0_usize);
                thread::scope(|s| {
                    for _ in 0..THREADS {
                        s.spawn(|| {
                            for i in 0..ITERS / 4 {
                                let mut guard = mutex.lock();
                                *guard += 1;
                                api::MutexGuard::bump(&mut guard);
                                *guard += 1;
                                if i % 2 == 0 {
                                    api::MutexGuard::unlock_fair(guard);
                                }
                            }
                        });
                    }
                });
                assert!(!mutex.is_locked());
                assert_eq!(mutex.into_inner(), 2 * THREADS * (ITERS / 4));
            }

            #[cfg(not(feature = "send_guard"))]
            #[test]
            fn guards_are_not_send_by_default() {
                assert_not_impl!(api::MutexGuard<'static, RawSpinLock, u32>: Send);
                assert_sync::<api::MutexGuard<'static, RawSpinLock, u32>>();
            }

            #[cfg(feature = "send_guard")]
            #[test]
            fn guards_are_send_with_send_guard() {
                assert_send::<api::MutexGuard<'static, RawSpinLock, u32>>();
                let mutex = ApiMutex::new(1_u32);
                let guard = mutex.lock();
                thread::scope(|s| {
                    s.spawn(move || drop(guard));
                });
                assert!(!mutex.is_locked());
            }
        }
    };
}

#[cfg(feature = "lock_api")]
lock_api_suite!(lock_api_05, lock_api, force_unlock: |mutex| {
    mutex.force_unlock(<<RawSpinLock as lock_api::RawMutex>::Guard>::new())
});

#[cfg(feature = "lock_api_04")]
lock_api_suite!(lock_api_04, lock_api_04, force_unlock: |mutex| mutex.force_unlock());
