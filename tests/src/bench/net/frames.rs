//! The frames the worker benchmark moves: Ethernet + IPv4 + TCP, as a Linux guest with checksum
//! and segmentation offload sends them, each with the virtio-net header that goes in front.

/// Ethernet frame lengths measured (no FCS): the smallest frame, a full 1500-byte MTU packet, and
/// a 64 KiB TSO frame (the largest frame a tap's MTU of 65521 lets in whole on the RX side).
pub const FRAME_SIZES: [usize; 3] = [64, 1514, MAX_FRAME];
/// The largest frame measured.
pub const MAX_FRAME: usize = 65535;

pub const ETH_HLEN: usize = 14;
const IP_HLEN: usize = 20;
const TCP_HLEN: usize = 20;
/// Where the TCP header starts and where its checksum sits in it.
const CSUM_START: u16 = (ETH_HLEN + IP_HLEN) as u16;
const CSUM_OFFSET: u16 = 16;
/// The MSS of a 1500-byte MTU with no TCP options: the segment size a TSO frame is cut into.
const MSS: u16 = 1460;
/// Frames longer than this are TSO frames.
const MAX_PLAIN_FRAME: usize = 1514;

/// The virtio-net header fields (virtio 1.2, 5.1.6).
const HDR_F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;

/// Destination of the frames the worker sends: no interface in the benchmark's namespace has this
/// MAC, so the namespace's stack takes each frame in and drops it as "for another host".
pub const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

/// `struct virtio_net_hdr` (10 bytes) for a frame of `len` bytes: checksum left to the other side,
/// and, when `tso` is set, GSO TCPv4 with a 1460-byte MSS for frames above 1514 bytes.
pub fn vnet_header(len: usize, tso: bool) -> [u8; 10] {
    let gso = tso && len > MAX_PLAIN_FRAME;
    let hdr_len = (ETH_HLEN + IP_HLEN + TCP_HLEN) as u16;
    let mut h = [0u8; 10];
    h[0] = HDR_F_NEEDS_CSUM;
    h[1] = if gso { GSO_TCPV4 } else { GSO_NONE };
    h[2..4].copy_from_slice(&(if gso { hdr_len } else { 0 }).to_le_bytes());
    h[4..6].copy_from_slice(&(if gso { MSS } else { 0 }).to_le_bytes());
    h[6..8].copy_from_slice(&CSUM_START.to_le_bytes());
    h[8..10].copy_from_slice(&CSUM_OFFSET.to_le_bytes());
    h
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet + IPv4 + TCP frame of exactly `len` bytes (at least 54) with a payload pattern
/// that depends on `seed`. The TCP checksum is left for offload, as the header says.
pub fn tcp_frame(len: usize, seed: u8) -> Vec<u8> {
    assert!(len >= ETH_HLEN + IP_HLEN + TCP_HLEN && len - ETH_HLEN <= 65535);
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; IP_HLEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((len - ETH_HLEN) as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 6; // TCP
    ip[12..16].copy_from_slice(&[10, 99, 0, 2]);
    ip[16..20].copy_from_slice(&[10, 99, 0, 1]);
    let csum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; TCP_HLEN];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // PSH, ACK
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    f.extend_from_slice(&tcp);
    let payload = len - f.len();
    f.extend((0..payload).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    f
}

/// Whether `frame` is one of ours: IPv4 to the peer address with our TCP ports.
pub fn is_test_frame(frame: &[u8]) -> bool {
    frame.len() >= ETH_HLEN + IP_HLEN + TCP_HLEN
        && frame[12..14] == [0x08, 0x00]
        && frame[ETH_HLEN + 12..ETH_HLEN + 16] == [10, 99, 0, 2]
        && frame[ETH_HLEN + IP_HLEN..ETH_HLEN + IP_HLEN + 4] == [0x9c, 0x40, 0x14, 0x51]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_asked_length_and_valid_ip_headers() {
        for len in FRAME_SIZES {
            let f = tcp_frame(len, 3);
            assert_eq!(f.len(), len);
            assert!(is_test_frame(&f));
            assert_eq!(ipv4_checksum(&f[ETH_HLEN..ETH_HLEN + IP_HLEN]), 0);
            let total = u16::from_be_bytes([f[16], f[17]]) as usize;
            assert_eq!(total + ETH_HLEN, len);
        }
        assert!(!is_test_frame(&[0u8; 60]));
    }

    #[test]
    fn only_frames_above_the_mtu_ask_for_tso() {
        assert_eq!(vnet_header(64, true)[1], GSO_NONE);
        assert_eq!(vnet_header(1514, true)[1], GSO_NONE);
        assert_eq!(vnet_header(65535, false)[1], GSO_NONE);
        let h = vnet_header(65535, true);
        assert_eq!(h[1], GSO_TCPV4);
        assert_eq!(u16::from_le_bytes([h[2], h[3]]), 54);
        assert_eq!(u16::from_le_bytes([h[4], h[5]]), 1460);
        assert_eq!(u16::from_le_bytes([h[6], h[7]]), 34);
    }
}
