//! The cluster's shape, and the one set of rules that places work on it: which worker owns a
//! SKU and a reservation id (by their hashes), which process that worker is on, and which
//! worker reads a Kafka partition. The dataflow's exchanges, a restore's routing, HTTP's
//! forwarding, the Kafka sources and the ClickHouse sink's ownership filter all ask here, so
//! they cannot disagree.

use crate::config::Settings;

/// A SKU's hash: it decides the SKU's owner worker ([`owner`]).
pub fn sku_hash(sku: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(sku.as_bytes())
}

/// A reservation id's hash: it decides the id's owner worker ([`owner`]).
pub fn id_hash(id: &str) -> u64 {
    // Another seed than the SKUs': an id and a SKU of the same name need not meet.
    xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), 0x1d5)
}

/// The worker (of `peers`) that owns what hashes to `hash`: the one function both timely's
/// exchange (which sends `hash % peers`) and a restore's routing follow.
pub fn owner(hash: u64, peers: usize) -> usize {
    (hash % peers.max(1) as u64) as usize
}

/// The worker (of `peers`) that reads partition `partition` of either topic (static
/// assignment: every process of a cluster follows it, no rebalancing).
pub fn reader(partition: i32, peers: usize) -> usize {
    partition.max(0) as usize % peers.max(1)
}

/// Where this process stands in the cluster (one process: index 0 of 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    /// This process's index.
    pub process: usize,
    /// Processes in the cluster.
    pub processes: usize,
    /// Workers per process.
    pub workers: usize,
}

impl Topology {
    /// From `[cluster]` and `pipeline.workers`.
    pub fn of(settings: &Settings) -> Self {
        Topology {
            process: settings.cluster.process,
            processes: settings.cluster.processes(),
            workers: settings.pipeline.workers,
        }
    }

    /// Workers in the whole cluster.
    pub fn peers(&self) -> usize {
        self.processes * self.workers
    }

    /// The cluster-wide index of local worker `local`.
    pub fn global(&self, local: usize) -> usize {
        self.process * self.workers + local
    }

    /// The process of cluster-wide worker `worker`.
    pub fn process_of(&self, worker: usize) -> usize {
        worker / self.workers.max(1)
    }

    /// The process whose worker owns `sku`.
    pub fn sku_process(&self, sku: &str) -> usize {
        self.process_of(owner(sku_hash(sku), self.peers()))
    }

    /// The process whose worker owns reservation id `id` (it knows the id's SKU).
    pub fn id_process(&self, id: &str) -> usize {
        self.process_of(owner(id_hash(id), self.peers()))
    }

    /// The process that reads `partition` of either topic.
    pub fn reader_process(&self, partition: i32) -> usize {
        self.process_of(reader(partition, self.peers()))
    }

    /// Whether this process owns `sku`.
    pub fn owns(&self, sku: &str) -> bool {
        self.sku_process(sku) == self.process
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_places_on_the_cluster_the_same_way() {
        let t = Topology {
            process: 1,
            processes: 3,
            workers: 2,
        };
        assert_eq!(t.peers(), 6);
        assert_eq!(t.global(1), 3);
        for p in 0..12 {
            assert_eq!(t.reader_process(p), (p as usize % 6) / 2);
        }
        for sku in ["A", "B", "sku-00017"] {
            assert_eq!(t.sku_process(sku), owner(sku_hash(sku), 6) / 2);
            assert_eq!(t.owns(sku), t.sku_process(sku) == 1);
        }
        assert_ne!(sku_hash("r1"), id_hash("r1"), "ids and SKUs spread apart");
    }
}
