//! Counting sequence numbers of a load run on the enriched topic: what arrived, what is missing,
//! what arrived more than once.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::Record;

/// The load simulator's summary (last line of its stdout).
pub fn summary(stdout: &str) -> Value {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no summary line in the simulator output: {stdout:?}"));
    serde_json::from_str(line).unwrap()
}

/// Every (device id, seq) the summary says was published.
pub fn expected(summary: &Value) -> BTreeMap<String, u64> {
    summary["last_seq"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, n)| (id.clone(), n.as_u64().unwrap()))
        .collect()
}

/// Copies of each (device id, seq) among `records`.
pub fn arrivals(records: &[Record]) -> HashMap<(String, u64), u32> {
    let mut seen = HashMap::new();
    for r in records {
        let Ok(v) = serde_json::from_slice::<Value>(&r.payload) else {
            continue;
        };
        if let (Some(id), Some(seq)) = (v["device_id"].as_str(), v["seq"].as_u64()) {
            *seen.entry((id.to_string(), seq)).or_insert(0) += 1;
        }
    }
    seen
}

/// (missing, duplicates) of `expected` among `seen`.
pub fn missing_and_duplicates(
    expected: &BTreeMap<String, u64>,
    seen: &HashMap<(String, u64), u32>,
) -> (Vec<(String, u64)>, u64) {
    let mut missing = Vec::new();
    for (id, last) in expected {
        for seq in 1..=*last {
            if !seen.contains_key(&(id.clone(), seq)) {
                missing.push((id.clone(), seq));
            }
        }
    }
    // Copies of the expected devices' messages only: a shared topic carries other runs too.
    let duplicates = seen
        .iter()
        .filter(|((id, _), _)| expected.contains_key(id))
        .map(|(_, n)| u64::from(n - 1))
        .sum();
    (missing, duplicates)
}

/// Whether every expected sequence number has arrived.
pub fn complete(expected: &BTreeMap<String, u64>, records: &[Record]) -> bool {
    missing_and_duplicates(expected, &arrivals(records))
        .0
        .is_empty()
}

/// Counts the copies of each (device id, seq) on Kafka topics read from the beginning, keeping
/// only the counts (a long overload run has too many records to keep whole).
pub struct SeqCounter {
    seen: std::sync::Arc<std::sync::Mutex<HashMap<(String, u64), u32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SeqCounter {
    pub fn start(bootstrap: &str, topics: &[String]) -> Self {
        use rdkafka::message::Message;
        let consumer = super::reader_from_beginning(bootstrap, topics, "itest-seq");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                loop {
                    match consumer.recv().await {
                        Ok(m) => {
                            let Ok(v) =
                                serde_json::from_slice::<Value>(m.payload().unwrap_or_default())
                            else {
                                continue;
                            };
                            if let (Some(id), Some(seq)) =
                                (v["device_id"].as_str(), v["seq"].as_u64())
                            {
                                *seen
                                    .lock()
                                    .unwrap()
                                    .entry((id.to_string(), seq))
                                    .or_insert(0) += 1;
                            }
                        }
                        Err(e) => eprintln!("sequence counter: {e}"),
                    }
                }
            }
        });
        Self { seen, task }
    }

    /// Distinct (device id, seq) pairs seen so far.
    pub fn distinct(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Distinct (device id, seq) pairs of the devices whose id starts with `prefix`.
    pub fn distinct_with_prefix(&self, prefix: &str) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.keys().filter(|(id, _)| id.starts_with(prefix)).count()
    }

    /// (missing, duplicates) of `expected`.
    pub fn missing_and_duplicates(
        &self,
        expected: &BTreeMap<String, u64>,
    ) -> (Vec<(String, u64)>, u64) {
        missing_and_duplicates(expected, &self.seen.lock().unwrap())
    }
}

impl Drop for SeqCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a sequence-numbered load run ended: its summary and the records collected.
pub struct Settled {
    pub summary: Value,
    pub records: Vec<Record>,
    pub missing: usize,
    pub duplicates: u64,
}

/// Waits for the load run `simulator` to end successfully, checks that it published
/// `published` messages, then waits up to `settle` for every sequence number on `collector`
/// (a lossy run never completes, so the wait ends there) and counts what is missing.
pub async fn settle(
    simulator: &mut super::Worker,
    collector: &super::Collector,
    published: u64,
    settle: std::time::Duration,
) -> Settled {
    assert!(
        simulator
            .wait_exit(std::time::Duration::from_secs(120))
            .await
            .success()
    );
    let summary = summary(&simulator.stdout_text());
    assert_eq!(summary["published"], published, "{summary}");
    let expected = expected(&summary);
    let records = collector
        .wait_until_or_timeout(settle, |r| complete(&expected, r))
        .await;
    let (missing, duplicates) = missing_and_duplicates(&expected, &arrivals(&records));
    Settled {
        summary,
        records,
        missing: missing.len(),
        duplicates,
    }
}
