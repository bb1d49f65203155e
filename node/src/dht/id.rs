//! 160-bit identifiers for nodes and keys, and the XOR metric between them.
//!
//! Node IDs and keys share one space (Kademlia): a key is the SHA-1 of what it names (a URL),
//! a node's ID is the SHA-1 of its DHT address, so a restarted node comes back with the same ID
//! and does not leave a stale twin in other nodes' tables. This module knows nothing of routing.

use std::fmt;

use rand::Rng;
use sha1::{Digest, Sha1};

/// Number of bits in an [`Id`].
pub const ID_BITS: usize = 160;

/// A 160-bit node ID or key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub [u8; 20]);

/// The XOR distance between two [`Id`]s; smaller is closer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Distance(pub [u8; 20]);

impl Id {
    /// The ID of a byte string: its SHA-1 digest.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha1::digest(bytes).into())
    }

    /// A uniformly random ID.
    pub fn random(rng: &mut impl Rng) -> Self {
        Self(rng.random())
    }

    /// The XOR distance to `other`.
    pub fn distance(&self, other: &Id) -> Distance {
        Distance(std::array::from_fn(|i| self.0[i] ^ other.0[i]))
    }

    /// Index of the k-bucket `other` falls in, seen from `self`: the length of the common
    /// prefix, 0 (differs in the first bit, the far half of the space) to 159. `None` for
    /// `self` itself.
    pub fn bucket_index(&self, other: &Id) -> Option<usize> {
        let zeros = self.distance(other).leading_zeros();
        (zeros < ID_BITS).then_some(zeros)
    }

    /// A random ID that falls in bucket `index` seen from `self`, used to refresh that bucket.
    pub fn random_in_bucket(&self, index: usize, rng: &mut impl Rng) -> Self {
        assert!(index < ID_BITS, "bucket index {index} out of range");
        let mut id = Id::random(rng).0;
        for bit in 0..=index {
            let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
            // Copy the common prefix from self, then flip the first differing bit.
            let own = self.0[byte] & mask;
            let wanted = if bit == index { own ^ mask } else { own };
            id[byte] = (id[byte] & !mask) | wanted;
        }
        Self(id)
    }
}

impl Distance {
    /// Number of leading zero bits: the length of the two IDs' common prefix.
    pub fn leading_zeros(&self) -> usize {
        let mut zeros = 0;
        for byte in self.0 {
            if byte == 0 {
                zeros += 8;
            } else {
                return zeros + byte.leading_zeros() as usize;
            }
        }
        zeros
    }
}

#[cfg(test)]
impl Id {
    /// An ID starting with `prefix`, zero after it: readable IDs for tests.
    pub(crate) fn starting_with(prefix: &[u8]) -> Self {
        let mut bytes = [0u8; 20];
        bytes[..prefix.len()].copy_from_slice(prefix);
        Self(bytes)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", &self.to_string()[..10])
    }
}

impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn key_of_a_url_is_its_sha1() {
        assert_eq!(
            Id::of(b"abc").to_string(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    #[test]
    fn distance_is_symmetric_and_zero_only_to_itself() {
        let mut rng = SmallRng::seed_from_u64(1);
        let (a, b) = (Id::random(&mut rng), Id::random(&mut rng));
        assert_eq!(a.distance(&b), b.distance(&a));
        assert_eq!(a.distance(&a).leading_zeros(), ID_BITS);
        assert_eq!(a.bucket_index(&a), None);
    }

    #[test]
    fn bucket_index_is_the_common_prefix_length() {
        let a = Id([0u8; 20]);
        let mut b = Id([0u8; 20]);
        b.0[0] = 0x80;
        assert_eq!(a.bucket_index(&b), Some(0));
        b.0[0] = 0x01;
        assert_eq!(a.bucket_index(&b), Some(7));
        b.0 = [0; 20];
        b.0[19] = 1;
        assert_eq!(a.bucket_index(&b), Some(159));
    }

    #[test]
    fn random_in_bucket_lands_in_that_bucket() {
        let mut rng = SmallRng::seed_from_u64(7);
        let own = Id::random(&mut rng);
        for index in [0, 1, 7, 8, 63, 100, 159] {
            let id = own.random_in_bucket(index, &mut rng);
            assert_eq!(own.bucket_index(&id), Some(index));
        }
    }
}
