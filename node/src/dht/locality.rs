//! Where a node sits in Coral's locality hierarchy.
//!
//! Level 0 is every node of the CoralCluster; each further level is one node label (by default
//! region, then zone), so the highest level is the most local. A node is a member of one
//! cluster per level, named by a [`ClusterId`]: a hash of the label values from the broadest
//! level down to that one, so `zone-a` in two regions are two clusters. Each level runs its own
//! DHT over its members only. This module only names clusters; it does not route.

use sha1::{Digest, Sha1};

/// Most levels below the global one that a packet may carry.
pub const MAX_LOCAL_LEVELS: usize = 8;

/// Identifies one cluster at one level; [`ClusterId::NONE`] marks a node without that label.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize)]
pub struct ClusterId(pub u64);

impl ClusterId {
    /// Not a member of any cluster at this level (the node lacks the label).
    pub const NONE: ClusterId = ClusterId(0);
}

/// A node's cluster at every level below the global one, broadest first.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default, serde::Serialize)]
pub struct Locality {
    clusters: Vec<ClusterId>,
}

impl Locality {
    /// The locality of a node whose label values are given most local first, as in the
    /// node configuration's `locality.labelKeys` (zone, then region); an empty value means
    /// the node lacks that label. Extra levels beyond [`MAX_LOCAL_LEVELS`] are dropped.
    pub fn from_labels(values_most_local_first: &[impl AsRef<str>]) -> Self {
        let broadest_first: Vec<&str> = values_most_local_first
            .iter()
            .rev()
            .map(AsRef::as_ref)
            .take(MAX_LOCAL_LEVELS)
            .collect();
        let clusters = (0..broadest_first.len())
            .map(|depth| {
                if broadest_first[depth].is_empty() {
                    return ClusterId::NONE;
                }
                let mut hash = Sha1::new();
                for value in &broadest_first[..=depth] {
                    hash.update(value.as_bytes());
                    hash.update([0]);
                }
                let digest = hash.finalize();
                let id = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
                ClusterId(id.max(1))
            })
            .collect();
        Self { clusters }
    }

    /// A locality from cluster IDs as carried on the wire, broadest first.
    pub fn from_clusters(clusters: Vec<ClusterId>) -> Self {
        Self { clusters }
    }

    /// Cluster IDs, broadest first (level 1 onwards).
    pub fn clusters(&self) -> &[ClusterId] {
        &self.clusters
    }

    /// Number of levels including the global one.
    pub fn levels(&self) -> usize {
        self.clusters.len() + 1
    }

    /// This node's cluster at `level` (level 0 is global and has none).
    pub fn cluster(&self, level: usize) -> Option<ClusterId> {
        match level {
            0 => None,
            level => self
                .clusters
                .get(level - 1)
                .copied()
                .filter(|c| *c != ClusterId::NONE),
        }
    }

    /// Whether `other` belongs to the same cluster as this node at `level`.
    pub fn shares(&self, other: &Locality, level: usize) -> bool {
        level == 0 || (self.cluster(level).is_some() && self.cluster(level) == other.cluster(level))
    }

    /// The most local level this node shares with `other` (0 when only the global one).
    pub fn shared_depth(&self, other: &Locality) -> usize {
        (1..self.levels())
            .rev()
            .find(|&level| self.shares(other, level))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_in_one_zone_share_every_level() {
        let a = Locality::from_labels(&["zone-a", "region-1"]);
        let b = Locality::from_labels(&["zone-a", "region-1"]);
        assert_eq!(a.levels(), 3);
        assert!((0..3).all(|level| a.shares(&b, level)));
        assert_eq!(a.shared_depth(&b), 2);
    }

    #[test]
    fn same_zone_name_in_two_regions_is_two_clusters() {
        let a = Locality::from_labels(&["zone-a", "region-1"]);
        let b = Locality::from_labels(&["zone-a", "region-2"]);
        assert!(a.shares(&b, 0));
        assert!(!a.shares(&b, 1));
        assert!(!a.shares(&b, 2));
        assert_eq!(a.shared_depth(&b), 0);
    }

    #[test]
    fn a_node_without_a_zone_label_is_in_no_zone_cluster() {
        let unlabelled = Locality::from_labels(&["", "region-1"]);
        let also = Locality::from_labels(&["", "region-1"]);
        assert!(unlabelled.shares(&also, 1));
        assert!(!unlabelled.shares(&also, 2));
        assert_eq!(unlabelled.cluster(2), None);
    }
}
