//! The DHT's packet format: compact, versioned, authenticated.
//!
//! Every packet is one UDP datagram of at most [`MAX_PACKET`] bytes, all integers big-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic `CD` |
//! | 2 | 4 | protocol version |
//! | 6 | 1 | message type (table below) |
//! | 7 | 8 | request id (a response echoes its request's) |
//! | 15 | 20 | sender's node ID (the SHA-1 of its address, checked against the source) |
//! | 35 | 4 | time sent, Unix seconds |
//! | 39 | 1 | level the message is about (0 = global) |
//! | 40 | 1 | `n`, number of the sender's cluster IDs |
//! | 41 | 8·n | sender's cluster ID per level, broadest first (0 = none) |
//! | … | 1 | `t`, length of the trace |
//! | … | t | trace: the client request served, printable ASCII (see `trace`; an answer echoes it) |
//! | … | … | body (table below) |
//! | end−16 | 16 | HMAC-SHA256 of everything before it, truncated to 128 bits |
//!
//! The MAC key is HMAC-SHA256(cluster secret, `coral-dht/` ‖ [`FORMAT`] ‖ `/` ‖ version), so
//! nodes of another cluster, another configured protocol version *or* another build of the
//! format (which the configured version need not follow) can never verify each other's packets,
//! let alone misread them; the version is also checked in clear first so that such packets are
//! counted as what they are. A packet sent
//! more than [`MAX_CLOCK_SKEW`] from the receiver's clock is dropped, which bounds how long a
//! captured packet can be replayed.
//!
//! | type | message | body |
//! |---|---|---|
//! | 1 | Ping | — |
//! | 2 | Pong | — |
//! | 3 | FindNode | target (20) |
//! | 4 | Nodes | contacts |
//! | 5 | Get | key (20), most values wanted (1), toward (20) |
//! | 6 | Values | values, contacts |
//! | 7 | Probe (put, forward phase) | key (20), TTL seconds (4), toward (20) |
//! | 8 | ProbeReply | flags (1: bit 0 full, bit 1 loaded), contacts |
//! | 9 | Store (put, reverse phase) | key (20), value |
//! | 10 | Stored | accepted (1), values (at most one: the incumbent) |
//!
//! *toward* is the ID the answer's contacts should be closest to: the intermediate target of
//! Coral's bit-at-a-time routing (see `path`), or the key itself.
//! *contacts* is a count (1) then per contact: node ID (20), address, and the seconds since
//! the sender last heard from that node directly (4). *values* is a count (1) then per value:
//! holder address, TTL seconds (4), metadata length (1) and metadata. An *address* is a family
//! byte (4 or 6), the IP (4 or 16) and the port (2). Counts are capped ([`MAX_CONTACTS`],
//! [`MAX_VALUES`], [`MAX_META`]) so a reply always fits one datagram.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::id::Id;
use super::locality::{ClusterId, Locality, MAX_LOCAL_LEVELS};
use super::trace::{MAX_TRACE, is_carriable};

/// Largest packet sent or accepted, well under a typical 1500-byte MTU.
pub const MAX_PACKET: usize = 1400;
/// Most contacts in one message.
pub const MAX_CONTACTS: usize = 16;
/// Most values in one message.
pub const MAX_VALUES: usize = 8;
/// Longest metadata of one value, in bytes.
pub const MAX_META: usize = 64;

/// Revision of this packet layout, part of the MAC key: 2 added the trace.
pub const FORMAT: u8 = 2;

const MAGIC: &[u8; 2] = b"CD";
const MAC_LEN: usize = 16;
const FIXED_HEADER: usize = 42;
/// Largest difference between a packet's send time and the receiver's clock.
pub const MAX_CLOCK_SKEW: u64 = 60;

/// One DHT message with its header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Matches a response to its request.
    pub request_id: u64,
    /// The sender's node ID.
    pub sender: Id,
    /// The sender's clusters.
    pub locality: Locality,
    /// Level of the DHT the message is about.
    pub level: u8,
    /// The client request this message serves (see [`super::trace`]); empty for upkeep.
    pub trace: Arc<str>,
    /// What the message says.
    pub body: Body,
}

/// A node as one node tells another about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactInfo {
    /// Its node ID.
    pub id: Id,
    /// Its DHT address.
    pub addr: SocketAddr,
    /// Seconds since the teller last heard from it directly: second-hand news carries its age.
    pub age_secs: u32,
}

/// One value stored under a key: a holder of the object and what it says about it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Value {
    /// Where the holder serves the object (its proxy address).
    pub holder: SocketAddr,
    /// Opaque metadata, at most [`MAX_META`] bytes (such as "fetching" or "complete").
    pub meta: Vec<u8>,
}

/// A value with the seconds it has left to live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedValue {
    /// The value.
    pub value: Value,
    /// Remaining lifetime in seconds.
    pub ttl_secs: u32,
}

/// The messages of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Are you alive?
    Ping,
    /// Yes.
    Pong,
    /// Which nodes do you know closest to `target`?
    FindNode {
        /// The ID sought.
        target: Id,
    },
    /// The nodes closest to the target that the sender knows.
    Nodes {
        /// The contacts.
        contacts: Vec<ContactInfo>,
    },
    /// Values under `key`, or the nodes closest to `toward`.
    Get {
        /// The key.
        key: Id,
        /// Most values wanted.
        max_values: u8,
        /// Where the contacts in the answer should be closest to.
        toward: Id,
    },
    /// Some values under the key (preferring holders near the asker), or closer nodes.
    Values {
        /// Values, empty when the sender holds none.
        values: Vec<TimedValue>,
        /// Closer nodes, when there are no values.
        contacts: Vec<ContactInfo>,
    },
    /// Forward phase of a put: are you full and loaded for `key`? And who is closest to `toward`?
    Probe {
        /// The key.
        key: Id,
        /// TTL of the value about to be put, which decides fullness.
        ttl_secs: u32,
        /// Where the contacts in the answer should be closest to.
        toward: Id,
    },
    /// The answer to a probe.
    ProbeReply {
        /// The sender holds enough long-lived values for the key.
        full: bool,
        /// The sender had more than beta requests for the key in the last minute.
        loaded: bool,
        /// Closer nodes.
        contacts: Vec<ContactInfo>,
    },
    /// Reverse phase of a put: store this value.
    Store {
        /// The key.
        key: Id,
        /// The value and its TTL.
        value: TimedValue,
    },
    /// Whether the value was stored (a node that became full and loaded since the probe
    /// refuses), and the value stored first under the key by another holder, if any.
    Stored {
        /// Stored or not.
        accepted: bool,
        /// The incumbent: the earliest live value of another holder.
        incumbent: Option<TimedValue>,
    },
}

impl Body {
    /// Short name of the message type, used as a metric label.
    pub fn name(&self) -> &'static str {
        match self {
            Body::Ping => "ping",
            Body::Pong => "pong",
            Body::FindNode { .. } => "find_node",
            Body::Nodes { .. } => "nodes",
            Body::Get { .. } => "get",
            Body::Values { .. } => "values",
            Body::Probe { .. } => "probe",
            Body::ProbeReply { .. } => "probe_reply",
            Body::Store { .. } => "store",
            Body::Stored { .. } => "stored",
        }
    }

    /// Whether this message asks for an answer (as opposed to being one).
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Body::Ping
                | Body::FindNode { .. }
                | Body::Get { .. }
                | Body::Probe { .. }
                | Body::Store { .. }
        )
    }

    fn type_byte(&self) -> u8 {
        match self {
            Body::Ping => 1,
            Body::Pong => 2,
            Body::FindNode { .. } => 3,
            Body::Nodes { .. } => 4,
            Body::Get { .. } => 5,
            Body::Values { .. } => 6,
            Body::Probe { .. } => 7,
            Body::ProbeReply { .. } => 8,
            Body::Store { .. } => 9,
            Body::Stored { .. } => 10,
        }
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The packet is of another protocol version.
    #[error("protocol version {got}, expected {expected}")]
    BadVersion {
        /// Version in the packet.
        got: u32,
        /// This node's version.
        expected: u32,
    },
    /// The MAC does not verify: another cluster's key, or tampering.
    #[error("bad MAC")]
    BadMac,
    /// The packet was sent too long ago (or in the future): a replay, or a badly set clock.
    #[error("sent {skew_secs} s away from this node's clock")]
    Stale {
        /// Difference between the send time and this node's clock, in seconds.
        skew_secs: u64,
    },
    /// The packet cannot be parsed.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

impl DecodeError {
    /// Short name of the reason, used as a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::BadVersion { .. } => "bad_version",
            DecodeError::BadMac => "bad_mac",
            DecodeError::Stale { .. } => "stale",
            DecodeError::Malformed(_) => "malformed",
        }
    }
}

/// Encodes and decodes packets for one cluster key and protocol version.
#[derive(Clone)]
pub struct Codec {
    version: u32,
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Codec {
    /// A codec for the cluster whose shared secret is `secret`, speaking `version`.
    pub fn new(secret: &[u8], version: u32) -> Self {
        let mut derive = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
        derive.update(b"coral-dht/");
        derive.update(&[FORMAT, b'/']);
        derive.update(&version.to_be_bytes());
        let packet_key = derive.finalize().into_bytes();
        Self {
            version,
            mac: Hmac::new_from_slice(&packet_key).expect("HMAC takes any key"),
        }
    }

    /// Encodes `packet`, stamped with the current time, truncating contact and value lists
    /// to what the format allows.
    pub fn encode(&self, packet: &Packet) -> Vec<u8> {
        self.encode_at(packet, unix_now())
    }

    /// Decodes and authenticates a datagram, checking its send time against the clock.
    pub fn decode(&self, bytes: &[u8]) -> Result<Packet, DecodeError> {
        self.decode_at(bytes, unix_now())
    }

    /// [`Codec::encode`] as if the time were `unix_secs`.
    pub fn encode_at(&self, packet: &Packet, unix_secs: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.push(packet.body.type_byte());
        out.extend_from_slice(&packet.request_id.to_be_bytes());
        out.extend_from_slice(&packet.sender.0);
        out.extend_from_slice(&(unix_secs as u32).to_be_bytes());
        out.push(packet.level);
        let clusters =
            &packet.locality.clusters()[..packet.locality.clusters().len().min(MAX_LOCAL_LEVELS)];
        out.push(clusters.len() as u8);
        for cluster in clusters {
            out.extend_from_slice(&cluster.0.to_be_bytes());
        }
        // `trace::traced` never sets a trace that cannot travel; should one appear, it is left
        // out rather than sent unreadable.
        let trace = if is_carriable(&packet.trace) {
            packet.trace.as_bytes()
        } else {
            &[]
        };
        out.push(trace.len() as u8);
        out.extend_from_slice(trace);
        encode_body(&packet.body, &mut out);
        let mut mac = self.mac.clone();
        mac.update(&out);
        out.extend_from_slice(&mac.finalize().into_bytes()[..MAC_LEN]);
        debug_assert!(out.len() <= MAX_PACKET, "packet of {} bytes", out.len());
        out
    }

    /// [`Codec::decode`] as if the time were `unix_secs`.
    pub fn decode_at(&self, bytes: &[u8], unix_secs: u64) -> Result<Packet, DecodeError> {
        if bytes.len() < FIXED_HEADER + MAC_LEN || bytes.len() > MAX_PACKET {
            return Err(DecodeError::Malformed("bad length"));
        }
        if &bytes[..2] != MAGIC {
            return Err(DecodeError::Malformed("not a Coral DHT packet"));
        }
        let got = u32::from_be_bytes(bytes[2..6].try_into().expect("4 bytes"));
        if got != self.version {
            return Err(DecodeError::BadVersion {
                got,
                expected: self.version,
            });
        }
        let (signed, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        let mut mac = self.mac.clone();
        mac.update(signed);
        mac.verify_truncated_left(tag)
            .map_err(|_| DecodeError::BadMac)?;
        let mut reader = Reader {
            bytes: signed,
            pos: 6,
        };
        let type_byte = reader.u8()?;
        let request_id = reader.u64()?;
        let sender = reader.id()?;
        let sent = reader.u32()?;
        // The distance on the 32-bit circle the stamp lives in, so the format outlives 2106.
        let now = unix_secs as u32;
        let skew_secs = u64::from(now.wrapping_sub(sent).min(sent.wrapping_sub(now)));
        if skew_secs > MAX_CLOCK_SKEW {
            return Err(DecodeError::Stale { skew_secs });
        }
        let level = reader.u8()?;
        let cluster_count = reader.u8()? as usize;
        if cluster_count > MAX_LOCAL_LEVELS || level as usize > cluster_count {
            return Err(DecodeError::Malformed("bad level or cluster count"));
        }
        let clusters = (0..cluster_count)
            .map(|_| reader.u64().map(ClusterId))
            .collect::<Result<_, _>>()?;
        let trace_len = reader.count(MAX_TRACE)?;
        let trace = std::str::from_utf8(reader.take(trace_len)?)
            .ok()
            .filter(|trace| is_carriable(trace))
            .ok_or(DecodeError::Malformed("trace not printable ASCII"))?;
        let body = decode_body(type_byte, &mut reader)?;
        if reader.pos != signed.len() {
            return Err(DecodeError::Malformed("trailing bytes"));
        }
        Ok(Packet {
            request_id,
            sender,
            locality: Locality::from_clusters(clusters),
            level,
            trace: Arc::from(trace),
            body,
        })
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn encode_body(body: &Body, out: &mut Vec<u8>) {
    match body {
        Body::Ping | Body::Pong => {}
        Body::FindNode { target } => out.extend_from_slice(&target.0),
        Body::Nodes { contacts } => encode_contacts(contacts, out),
        Body::Get {
            key,
            max_values,
            toward,
        } => {
            out.extend_from_slice(&key.0);
            out.push(*max_values);
            out.extend_from_slice(&toward.0);
        }
        Body::Values { values, contacts } => {
            let values = &values[..values.len().min(MAX_VALUES)];
            out.push(values.len() as u8);
            for value in values {
                encode_value(value, out);
            }
            encode_contacts(contacts, out);
        }
        Body::Probe {
            key,
            ttl_secs,
            toward,
        } => {
            out.extend_from_slice(&key.0);
            out.extend_from_slice(&ttl_secs.to_be_bytes());
            out.extend_from_slice(&toward.0);
        }
        Body::ProbeReply {
            full,
            loaded,
            contacts,
        } => {
            out.push(u8::from(*full) | (u8::from(*loaded) << 1));
            encode_contacts(contacts, out);
        }
        Body::Store { key, value } => {
            out.extend_from_slice(&key.0);
            encode_value(value, out);
        }
        Body::Stored {
            accepted,
            incumbent,
        } => {
            out.push(u8::from(*accepted));
            out.push(u8::from(incumbent.is_some()));
            if let Some(value) = incumbent {
                encode_value(value, out);
            }
        }
    }
}

fn encode_contacts(contacts: &[ContactInfo], out: &mut Vec<u8>) {
    let contacts = &contacts[..contacts.len().min(MAX_CONTACTS)];
    out.push(contacts.len() as u8);
    for contact in contacts {
        out.extend_from_slice(&contact.id.0);
        encode_addr(&contact.addr, out);
        out.extend_from_slice(&contact.age_secs.to_be_bytes());
    }
}

fn encode_value(value: &TimedValue, out: &mut Vec<u8>) {
    encode_addr(&value.value.holder, out);
    out.extend_from_slice(&value.ttl_secs.to_be_bytes());
    let meta = &value.value.meta[..value.value.meta.len().min(MAX_META)];
    out.push(meta.len() as u8);
    out.extend_from_slice(meta);
}

fn encode_addr(addr: &SocketAddr, out: &mut Vec<u8>) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

fn decode_body(type_byte: u8, reader: &mut Reader<'_>) -> Result<Body, DecodeError> {
    Ok(match type_byte {
        1 => Body::Ping,
        2 => Body::Pong,
        3 => Body::FindNode {
            target: reader.id()?,
        },
        4 => Body::Nodes {
            contacts: reader.contacts()?,
        },
        5 => Body::Get {
            key: reader.id()?,
            max_values: reader.u8()?,
            toward: reader.id()?,
        },
        6 => {
            let count = reader.count(MAX_VALUES)?;
            let values = (0..count)
                .map(|_| reader.value())
                .collect::<Result<_, _>>()?;
            Body::Values {
                values,
                contacts: reader.contacts()?,
            }
        }
        7 => Body::Probe {
            key: reader.id()?,
            ttl_secs: reader.u32()?,
            toward: reader.id()?,
        },
        8 => {
            let flags = reader.u8()?;
            if flags > 3 {
                return Err(DecodeError::Malformed("unknown probe flags"));
            }
            Body::ProbeReply {
                full: flags & 1 != 0,
                loaded: flags & 2 != 0,
                contacts: reader.contacts()?,
            }
        }
        9 => Body::Store {
            key: reader.id()?,
            value: reader.value()?,
        },
        10 => {
            let accepted = reader.boolean()?;
            let incumbent = if reader.boolean()? {
                Some(reader.value()?)
            } else {
                None
            };
            Body::Stored {
                accepted,
                incumbent,
            }
        }
        _ => return Err(DecodeError::Malformed("unknown message type")),
    })
}

/// Reads a signed packet, every read checked against its end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(DecodeError::Malformed("truncated"))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn id(&mut self) -> Result<Id, DecodeError> {
        Ok(Id(self.array()?))
    }

    fn count(&mut self, max: usize) -> Result<usize, DecodeError> {
        let count = self.u8()? as usize;
        if count > max {
            return Err(DecodeError::Malformed("list too long"));
        }
        Ok(count)
    }

    fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => return Err(DecodeError::Malformed("bad address family")),
        };
        Ok(SocketAddr::new(ip, u16::from_be_bytes(self.array()?)))
    }

    fn contacts(&mut self) -> Result<Vec<ContactInfo>, DecodeError> {
        let count = self.count(MAX_CONTACTS)?;
        (0..count)
            .map(|_| {
                Ok(ContactInfo {
                    id: self.id()?,
                    addr: self.addr()?,
                    age_secs: self.u32()?,
                })
            })
            .collect()
    }

    fn boolean(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Malformed("bad boolean")),
        }
    }

    fn value(&mut self) -> Result<TimedValue, DecodeError> {
        let holder = self.addr()?;
        let ttl_secs = self.u32()?;
        let len = self.count(MAX_META)?;
        let meta = self.take(len)?.to_vec();
        Ok(TimedValue {
            value: Value { holder, meta },
            ttl_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn codec() -> Codec {
        Codec::new(b"a shared secret of at least thirty-two bytes", 1)
    }

    fn contact(n: u8, v6: bool) -> ContactInfo {
        let ip: IpAddr = if v6 {
            Ipv6Addr::LOCALHOST.into()
        } else {
            Ipv4Addr::new(127, 0, 0, n).into()
        };
        ContactInfo {
            id: Id([n; 20]),
            addr: SocketAddr::new(ip, 9000 + u16::from(n)),
            age_secs: u32::from(n) * 7,
        }
    }

    fn packet(body: Body) -> Packet {
        Packet {
            request_id: 0xdead_beef_0102_0304,
            sender: Id([9; 20]),
            locality: Locality::from_labels(&["zone-a", "region-1"]),
            level: 2,
            trace: Arc::from("r".repeat(MAX_TRACE)),
            body,
        }
    }

    fn full_value(n: u8) -> TimedValue {
        TimedValue {
            value: Value {
                holder: contact(n, n.is_multiple_of(2)).addr,
                meta: vec![n; MAX_META],
            },
            ttl_secs: 3600,
        }
    }

    fn every_body() -> Vec<Body> {
        let contacts: Vec<_> = (0..MAX_CONTACTS as u8)
            .map(|n| contact(n, n.is_multiple_of(2)))
            .collect();
        vec![
            Body::Ping,
            Body::Pong,
            Body::FindNode {
                target: Id([3; 20]),
            },
            Body::Nodes {
                contacts: contacts.clone(),
            },
            Body::Get {
                key: Id([4; 20]),
                max_values: 4,
                toward: Id([8; 20]),
            },
            Body::Values {
                values: (0..MAX_VALUES as u8).map(full_value).collect(),
                contacts: vec![],
            },
            Body::Values {
                values: vec![],
                contacts: contacts.clone(),
            },
            Body::Probe {
                key: Id([5; 20]),
                ttl_secs: 20,
                toward: Id([2; 20]),
            },
            Body::ProbeReply {
                full: true,
                loaded: false,
                contacts: contacts.clone(),
            },
            Body::Store {
                key: Id([6; 20]),
                value: full_value(1),
            },
            Body::Stored {
                accepted: true,
                incumbent: None,
            },
            Body::Stored {
                accepted: true,
                incumbent: Some(full_value(3)),
            },
        ]
    }

    #[test]
    fn every_message_round_trips_and_fits_a_datagram() {
        for body in every_body() {
            let sent = packet(body);
            let bytes = codec().encode(&sent);
            assert!(bytes.len() <= MAX_PACKET, "{} bytes", bytes.len());
            assert_eq!(codec().decode(&bytes), Ok(sent));
        }
    }

    #[test]
    fn another_clusters_key_fails_the_mac() {
        let bytes = codec().encode(&packet(Body::Ping));
        let other = Codec::new(b"another cluster's secret, also long enough", 1);
        assert_eq!(other.decode(&bytes), Err(DecodeError::BadMac));
    }

    #[test]
    fn another_version_is_named_as_such() {
        let bytes = Codec::new(b"a shared secret of at least thirty-two bytes", 2)
            .encode(&packet(Body::Ping));
        assert_eq!(
            codec().decode(&bytes),
            Err(DecodeError::BadVersion {
                got: 2,
                expected: 1
            })
        );
    }

    #[test]
    fn a_packet_replayed_after_the_allowed_skew_is_stale() {
        let sent_at = 1_800_000_000;
        let bytes = codec().encode_at(&packet(Body::Ping), sent_at);
        assert!(codec().decode_at(&bytes, sent_at + MAX_CLOCK_SKEW).is_ok());
        assert_eq!(
            codec().decode_at(&bytes, sent_at + MAX_CLOCK_SKEW + 1),
            Err(DecodeError::Stale {
                skew_secs: MAX_CLOCK_SKEW + 1
            })
        );
        assert_eq!(
            codec().decode_at(&bytes, sent_at - 3600),
            Err(DecodeError::Stale { skew_secs: 3600 })
        );
    }

    #[test]
    fn a_flipped_bit_anywhere_is_rejected() {
        let bytes = codec().encode(&packet(Body::FindNode {
            target: Id([1; 20]),
        }));
        for index in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[index] ^= 0x10;
            assert!(codec().decode(&tampered).is_err(), "byte {index}");
        }
    }

    #[test]
    fn a_forged_packet_with_a_valid_mac_but_bad_body_is_malformed() {
        let mut bytes = codec().encode(&packet(Body::Stored {
            accepted: true,
            incumbent: None,
        }));
        bytes[6] = 99;
        assert_eq!(
            codec().decode(&resigned(bytes)),
            Err(DecodeError::Malformed("unknown message type"))
        );
    }

    #[test]
    fn a_trace_that_is_not_printable_ascii_is_malformed() {
        let mut bytes = codec().encode(&packet(Body::Ping));
        let trace_at = bytes
            .windows(MAX_TRACE)
            .position(|window| window.iter().all(|&b| b == b'r'))
            .expect("the trace is in the packet");
        bytes[trace_at + 3] = b' ';
        assert_eq!(
            codec().decode(&resigned(bytes)),
            Err(DecodeError::Malformed("trace not printable ASCII"))
        );
    }

    #[test]
    fn a_packet_carries_its_trace_and_upkeep_carries_none() {
        let traced = packet(Body::Ping);
        assert_eq!(
            codec().decode(&codec().encode(&traced)).unwrap().trace,
            traced.trace
        );
        let upkeep = Packet {
            trace: Arc::from(""),
            ..packet(Body::Ping)
        };
        assert_eq!(
            &*codec().decode(&codec().encode(&upkeep)).unwrap().trace,
            ""
        );
    }

    /// `bytes`, an encoded packet, with its MAC recomputed after an edit.
    fn resigned(mut bytes: Vec<u8>) -> Vec<u8> {
        bytes.truncate(bytes.len() - MAC_LEN);
        let mut mac = codec().mac.clone();
        mac.update(&bytes);
        bytes.extend_from_slice(&mac.finalize().into_bytes()[..MAC_LEN]);
        bytes
    }

    /// Signs arbitrary bytes as a header and body, with a current send time, so the fuzzer
    /// reaches the body parser.
    fn signed(payload: &[u8]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.extend_from_slice(payload);
        if bytes.len() >= 39 {
            bytes[35..39].copy_from_slice(&(unix_now() as u32).to_be_bytes());
        }
        let mut mac = codec().mac.clone();
        mac.update(&bytes);
        bytes.extend_from_slice(&mac.finalize().into_bytes()[..MAC_LEN]);
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = codec().decode(&bytes);
        }

        #[test]
        fn arbitrary_signed_bodies_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let _ = codec().decode(&signed(&payload));
        }

        #[test]
        fn mutated_valid_packets_never_panic(
            which in 0..11usize,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = codec().encode(&packet(every_body()[which].clone()));
            bytes.truncate(bytes.len() - MAC_LEN);
            for (index, byte) in edits {
                let index = index % bytes.len();
                bytes[index] = byte;
            }
            let _ = codec().decode(&signed(&bytes[6..]));
        }
    }
}
