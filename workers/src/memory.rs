//! Memory bounded in bytes: the container's memory limit (cgroup v2 or v1), the in-flight byte
//! budget derived from it, librdkafka's buffer sizes in line with that budget, and
//! [`ByteBudget`], the semaphore that holds a worker's in-flight work under it.
//!
//! A count of records in flight bounds nothing when records can be 256 KiB each; the byte budget
//! does. The reading and the derivation are plain functions (the I/O is one file read), so that
//! the bridge can apply the same rules.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The default budget when the process runs without a memory limit (a laptop, the test
/// environment).
pub const DEFAULT_BUDGET_WITHOUT_LIMIT: u64 = 64 * 1024 * 1024;
/// The share of the memory limit the in-flight work may use by default (the rest: the binary,
/// librdkafka's own buffers, the registry, the allocator's slack).
pub const LIMIT_DIVISOR: u64 = 4;
/// The smallest budget accepted: below it every record would be processed alone.
pub const MIN_BUDGET: u64 = 64 * 1024;
/// cgroup v1 reports "no limit" as a huge number (`9223372036854771712`, the largest page
/// multiple); anything from here up counts as unlimited.
const UNLIMITED_FROM: u64 = 1 << 60;
/// Accounting unit of [`ByteBudget`] (a semaphore acquires at most `u32::MAX` permits at once).
const UNIT: u64 = 1024;

/// The memory limit in a cgroup file's text: `max` (v2) or a huge number (v1) is no limit.
pub fn parse_limit(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse::<u64>()
        .ok()
        .filter(|&n| n > 0 && n < UNLIMITED_FROM)
}

/// The memory limit of the cgroup mounted at `root`: `memory.max` (v2), else
/// `memory/memory.limit_in_bytes` (v1); `None` when neither exists or there is no limit.
pub fn memory_limit_at(root: &Path) -> Option<u64> {
    let v2 = root.join("memory.max");
    let v1 = root.join("memory").join("memory.limit_in_bytes");
    [v2, v1]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| parse_limit(&text))
}

/// This container's memory limit, from `/sys/fs/cgroup`.
pub fn memory_limit() -> Option<u64> {
    memory_limit_at(Path::new("/sys/fs/cgroup"))
}

/// The default in-flight budget: a quarter of the memory limit, or
/// [`DEFAULT_BUDGET_WITHOUT_LIMIT`] without one; never below [`MIN_BUDGET`].
pub fn default_budget(limit: Option<u64>) -> u64 {
    limit
        .map_or(DEFAULT_BUDGET_WITHOUT_LIMIT, |l| l / LIMIT_DIVISOR)
        .max(MIN_BUDGET)
}

/// A budget that cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "an in-flight budget of {budget} bytes exceeds the container's memory limit of {limit} bytes; \
         set it below the limit (default: a quarter of it) or raise the limit"
    )]
    AboveLimit { budget: u64, limit: u64 },
    #[error("an in-flight budget of {0} bytes is too small: at least {MIN_BUDGET} bytes")]
    TooSmall(u64),
}

/// The budget to use: the explicit one if it fits the memory limit, else the default.
pub fn choose_budget(explicit: Option<u64>, limit: Option<u64>) -> Result<u64, BudgetError> {
    match (explicit, limit) {
        (Some(budget), _) if budget < MIN_BUDGET => Err(BudgetError::TooSmall(budget)),
        (Some(budget), Some(limit)) if budget > limit => {
            Err(BudgetError::AboveLimit { budget, limit })
        }
        (Some(budget), _) => Ok(budget),
        (None, limit) => Ok(default_budget(limit)),
    }
}

/// librdkafka's consumer prefetch (`queued.max.messages.kbytes`, and `fetch.max.bytes` in bytes):
/// a quarter of the budget, between 1 MiB and 8 MiB (8 MiB, the value before the budget existed,
/// from a 32 MiB budget up). The enrichment is CPU-bound; a deeper queue only costs memory.
pub fn consumer_prefetch_bytes(budget: u64) -> u64 {
    (budget / 4).clamp(1024 * 1024, 8 * 1024 * 1024)
}

/// librdkafka's producer queue (`queue.buffering.max.kbytes`): the budget (the produced outputs
/// it holds are counted in it), at least 4 MiB so that a record of the largest size the producer
/// accepts (`message.max.bytes`, 1 MB) always fits and enqueueing never waits for ever.
pub fn producer_queue_kbytes(budget: u64) -> u64 {
    budget.max(4 * 1024 * 1024) / 1024
}

/// Bytes of work in flight, held under a limit. Each piece of work acquires its size (raw payload
/// plus produced outputs) before it starts and gives it back when its [`BytePermit`] drops; an
/// acquisition larger than the whole budget takes the whole budget, so it runs alone and never
/// waits for ever. The bytes in use therefore never exceed `max(limit, largest piece)`.
#[derive(Clone)]
pub struct ByteBudget {
    inner: Arc<Inner>,
}

struct Inner {
    semaphore: Arc<Semaphore>,
    limit: u64,
    units: u32,
    in_use: AtomicU64,
    peak: AtomicU64,
    gauges: Option<(IntGauge, IntGauge)>,
}

/// Bytes held until dropped.
pub struct BytePermit {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
    budget: Arc<Inner>,
}

impl ByteBudget {
    /// A budget of `limit` bytes (rounded down to whole KiB, at least one).
    pub fn new(limit: u64) -> Self {
        let units = u32::try_from(limit / UNIT).unwrap_or(u32::MAX).max(1);
        Self {
            inner: Arc::new(Inner {
                semaphore: Arc::new(Semaphore::new(units as usize)),
                limit,
                units,
                in_use: AtomicU64::new(0),
                peak: AtomicU64::new(0),
                gauges: None,
            }),
        }
    }

    /// The same budget, reporting the bytes in use and their highest value on two gauges.
    pub fn observed_by(limit: u64, in_use: IntGauge, peak: IntGauge) -> Self {
        let mut budget = Self::new(limit);
        Arc::get_mut(&mut budget.inner)
            .expect("not shared yet")
            .gauges = Some((in_use, peak));
        budget
    }

    pub fn limit(&self) -> u64 {
        self.inner.limit
    }

    /// Bytes held now.
    pub fn in_use(&self) -> u64 {
        self.inner.in_use.load(Ordering::Relaxed)
    }

    /// The most bytes ever held at once.
    pub fn peak(&self) -> u64 {
        self.inner.peak.load(Ordering::Relaxed)
    }

    fn units_for(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.inner.units)
    }

    /// Waits until `bytes` fit (alone, when they exceed the whole budget).
    pub async fn acquire(&self, bytes: u64) -> BytePermit {
        let permit = self
            .inner
            .semaphore
            .clone()
            .acquire_many_owned(self.units_for(bytes))
            .await
            .expect("the budget's semaphore is never closed");
        self.held(permit, bytes)
    }

    /// `bytes` if they fit now.
    pub fn try_acquire(&self, bytes: u64) -> Option<BytePermit> {
        let permit = self
            .inner
            .semaphore
            .clone()
            .try_acquire_many_owned(self.units_for(bytes))
            .ok()?;
        Some(self.held(permit, bytes))
    }

    fn held(&self, permit: OwnedSemaphorePermit, bytes: u64) -> BytePermit {
        let inner = &self.inner;
        let now = inner.in_use.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let peak = inner.peak.fetch_max(now, Ordering::Relaxed).max(now);
        if let Some((in_use, high)) = &inner.gauges {
            in_use.add(i64::try_from(bytes).unwrap_or(i64::MAX));
            high.set(i64::try_from(peak).unwrap_or(i64::MAX));
        }
        BytePermit {
            _permit: permit,
            bytes,
            budget: inner.clone(),
        }
    }
}

impl BytePermit {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for BytePermit {
    fn drop(&mut self) {
        self.budget.in_use.fetch_sub(self.bytes, Ordering::Relaxed);
        if let Some((in_use, _)) = &self.budget.gauges {
            in_use.sub(i64::try_from(self.bytes).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn cgroup_files_give_a_limit_or_none() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("536870912\n"), Some(512 * MIB));
        // cgroup v1 without a limit.
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit(""), None);
        assert_eq!(parse_limit("0"), None);
        assert_eq!(parse_limit("garbage"), None);
    }

    #[test]
    fn the_limit_is_read_from_cgroup_v2_then_v1() {
        let dir = std::env::temp_dir().join(format!("iot-memory-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("memory")).unwrap();
        // Nothing there: no limit.
        assert_eq!(memory_limit_at(&dir), None);
        std::fs::write(dir.join("memory/memory.limit_in_bytes"), "268435456\n").unwrap();
        assert_eq!(memory_limit_at(&dir), Some(256 * MIB));
        std::fs::write(dir.join("memory.max"), "134217728\n").unwrap();
        assert_eq!(memory_limit_at(&dir), Some(128 * MIB));
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        assert_eq!(memory_limit_at(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(memory_limit_at(Path::new("/nonexistent/cgroup")), None);
    }

    #[test]
    fn the_budget_is_a_quarter_of_the_limit_and_an_explicit_one_must_fit() {
        assert_eq!(default_budget(None), 64 * MIB);
        assert_eq!(default_budget(Some(512 * MIB)), 128 * MIB);
        assert_eq!(default_budget(Some(100 * 1024)), MIN_BUDGET);
        assert_eq!(choose_budget(None, Some(512 * MIB)), Ok(128 * MIB));
        assert_eq!(choose_budget(Some(32 * MIB), Some(512 * MIB)), Ok(32 * MIB));
        assert_eq!(choose_budget(Some(32 * MIB), None), Ok(32 * MIB));
        let e = choose_budget(Some(1024 * MIB), Some(512 * MIB)).unwrap_err();
        assert_eq!(
            e,
            BudgetError::AboveLimit {
                budget: 1024 * MIB,
                limit: 512 * MIB
            }
        );
        assert!(
            e.to_string()
                .contains("exceeds the container's memory limit")
        );
        assert_eq!(
            choose_budget(Some(10), None),
            Err(BudgetError::TooSmall(10))
        );
    }

    #[test]
    fn librdkafka_buffers_follow_the_budget() {
        assert_eq!(consumer_prefetch_bytes(64 * MIB), 8 * MIB);
        assert_eq!(consumer_prefetch_bytes(8 * MIB), 2 * MIB);
        assert_eq!(consumer_prefetch_bytes(MIN_BUDGET), MIB);
        assert_eq!(producer_queue_kbytes(64 * MIB), 64 * 1024);
        assert_eq!(producer_queue_kbytes(MIB), 4 * 1024);
    }

    #[tokio::test]
    async fn a_piece_larger_than_the_budget_runs_alone() {
        let budget = ByteBudget::new(MIB);
        let small = budget.acquire(300 * 1024).await;
        assert!(
            budget.try_acquire(5 * MIB).is_none(),
            "waits for the small one"
        );
        drop(small);
        let huge = tokio::time::timeout(Duration::from_secs(1), budget.acquire(5 * MIB))
            .await
            .expect("an oversize piece is not refused for ever");
        assert_eq!(budget.in_use(), 5 * MIB);
        assert!(budget.try_acquire(1).is_none(), "nothing runs beside it");
        drop(huge);
        assert_eq!(budget.in_use(), 0);
        assert!(budget.try_acquire(MIB).is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_in_use_never_exceed_the_budget() {
        let in_use = IntGauge::new("in_use", "in use").unwrap();
        let peak = IntGauge::new("peak", "peak").unwrap();
        let budget = ByteBudget::observed_by(MIB, in_use.clone(), peak.clone());
        let tasks: Vec<_> = (0..64u64)
            .map(|i| {
                let budget = budget.clone();
                tokio::spawn(async move {
                    let permit = budget.acquire(256 * 1024 - i * 100).await;
                    assert!(budget.in_use() <= MIB, "{} in use", budget.in_use());
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    drop(permit);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(budget.peak() <= MIB && budget.peak() > 512 * 1024);
        assert_eq!(budget.in_use(), 0);
        assert_eq!(in_use.get(), 0);
        assert_eq!(u64::try_from(peak.get()).unwrap(), budget.peak());
    }
}
