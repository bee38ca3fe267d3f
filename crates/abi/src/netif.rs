//! `xen/io/netif.h`: the network device protocol's transmit and receive
//! requests and responses, extra-info slots, the control ring and the
//! Toeplitz hash.

crate::wire_struct! {
    /// A packet (or a fragment of one) the frontend transmits.
    #[c = "struct netif_tx_request"]
    #[repr(C)]
    pub struct NetifTxRequest {
        /// Grant of the page holding the data.
        pub gref: u32,
        /// Offset of the data in the page.
        pub offset: u16,
        /// `NETTXF_*`.
        pub flags: u16,
        /// Echoed in the response.
        pub id: u16,
        /// Size of the packet for the first slot, of this fragment otherwise.
        pub size: u16,
    }

    /// The answer to a transmit request.
    #[c = "struct netif_tx_response"]
    #[repr(C)]
    pub struct NetifTxResponse {
        /// The request's `id`.
        pub id: u16,
        /// `NETIF_RSP_*`.
        pub status: i16,
    }

    /// A page the frontend offers for a received packet.
    #[c = "struct netif_rx_request"]
    #[repr(C)]
    pub struct NetifRxRequest {
        /// Echoed in the response.
        pub id: u16,
        /// Padding.
        pub pad: u16,
        /// Grant of the page.
        pub gref: u32,
    }

    /// A received packet (or a fragment of one).
    #[c = "struct netif_rx_response"]
    #[repr(C)]
    pub struct NetifRxResponse {
        /// The request's `id`.
        pub id: u16,
        /// Offset of the data in the page.
        pub offset: u16,
        /// `NETRXF_*`.
        pub flags: u16,
        /// Size of the data, or a negative `NETIF_RSP_*`.
        pub status: i16,
    }

    /// An extra-info slot, following a request with `NETTXF_extra_info` or a
    /// response with `NETRXF_extra_info`; `u` is one of [`NetifExtraGso`],
    /// [`NetifExtraMcast`] or [`NetifExtraHash`], by `type_`.
    #[c = "struct netif_extra_info"]
    #[repr(C)]
    pub struct NetifExtraInfo {
        /// `XEN_NETIF_EXTRA_TYPE_*`.
        pub type_: u8,
        /// `XEN_NETIF_EXTRA_FLAG_*`.
        pub flags: u8,
        /// The type-specific part.
        pub u: [u8; 6],
    }

    /// The GSO part of an extra-info slot.
    #[c = "__typeof__(((struct netif_extra_info *)0)->u.gso)"]
    #[repr(C)]
    pub struct NetifExtraGso {
        /// Maximum payload of each segment.
        pub size: u16,
        /// `XEN_NETIF_GSO_TYPE_*`.
        pub type_: u8,
        /// Padding.
        pub pad: u8,
        /// Reserved: zero.
        pub features: u16,
    }

    /// The multicast part of an extra-info slot.
    #[c = "__typeof__(((struct netif_extra_info *)0)->u.mcast)"]
    #[repr(C)]
    pub struct NetifExtraMcast {
        /// The Ethernet address to add or remove.
        pub addr: [u8; 6],
    }

    /// The hash part of an extra-info slot.
    #[c = "__typeof__(((struct netif_extra_info *)0)->u.hash)"]
    #[repr(C)]
    pub struct NetifExtraHash {
        /// `_XEN_NETIF_CTRL_HASH_TYPE_*`.
        pub type_: u8,
        /// `XEN_NETIF_CTRL_HASH_ALGORITHM_*`.
        pub algorithm: u8,
        /// The hash, little-endian.
        pub value: [u8; 4],
    }

    /// A control-ring request.
    #[c = "struct xen_netif_ctrl_request"]
    #[repr(C)]
    pub struct NetifCtrlRequest {
        /// Echoed in the response.
        pub id: u16,
        /// `XEN_NETIF_CTRL_TYPE_*`.
        pub type_: u16,
        /// Type-specific arguments.
        pub data: [u32; 3],
    }

    /// A control-ring response.
    #[c = "struct xen_netif_ctrl_response"]
    #[repr(C)]
    pub struct NetifCtrlResponse {
        /// The request's `id`.
        pub id: u16,
        /// The request's `type`.
        pub type_: u16,
        /// `XEN_NETIF_CTRL_STATUS_*`.
        pub status: u32,
        /// Type-specific result.
        pub data: u32,
    }

    /// An entry of a grant-mapping control request.
    #[c = "struct xen_netif_gref"]
    #[repr(C)]
    pub struct NetifGref {
        /// The grant.
        pub ref_: u32,
        /// `XEN_NETIF_CTRLF_GREF_*`.
        pub flags: u16,
        /// `XEN_NETIF_CTRL_STATUS_*` of this entry.
        pub status: u16,
    }
}

/// Every wire structure of this module.
pub const LAYOUTS: &[crate::pod::TypeLayout] = {
    use crate::pod::CLayout;
    &[
        NetifTxRequest::LAYOUT,
        NetifTxResponse::LAYOUT,
        NetifRxRequest::LAYOUT,
        NetifRxResponse::LAYOUT,
        NetifExtraInfo::LAYOUT,
        NetifExtraGso::LAYOUT,
        NetifExtraMcast::LAYOUT,
        NetifExtraHash::LAYOUT,
        NetifCtrlRequest::LAYOUT,
        NetifCtrlResponse::LAYOUT,
        NetifGref::LAYOUT,
    ]
};

crate::xen_consts! {
    /// Slots a backend must accept for one packet, at least.
    XEN_NETIF_NR_SLOTS_MIN: u32 = 18;
    /// Largest packet a transmit request can describe.
    XEN_NETIF_MAX_TX_SIZE: u32 = 0xFFFF;
    /// Transmit: the checksum is blank (to be filled in).
    NETTXF_CSUM_BLANK: u16 = 1 << 0, c "NETTXF_csum_blank";
    /// Transmit: the checksum has been checked.
    NETTXF_DATA_VALIDATED: u16 = 1 << 1, c "NETTXF_data_validated";
    /// Transmit: more fragments follow.
    NETTXF_MORE_DATA: u16 = 1 << 2, c "NETTXF_more_data";
    /// Transmit: an extra-info slot follows.
    NETTXF_EXTRA_INFO: u16 = 1 << 3, c "NETTXF_extra_info";
    /// Receive: the checksum has been checked.
    NETRXF_DATA_VALIDATED: u16 = 1 << 0, c "NETRXF_data_validated";
    /// Receive: the checksum is blank.
    NETRXF_CSUM_BLANK: u16 = 1 << 1, c "NETRXF_csum_blank";
    /// Receive: more fragments follow.
    NETRXF_MORE_DATA: u16 = 1 << 2, c "NETRXF_more_data";
    /// Receive: an extra-info slot follows.
    NETRXF_EXTRA_INFO: u16 = 1 << 3, c "NETRXF_extra_info";
    /// Receive: a GSO prefix slot precedes the packet.
    NETRXF_GSO_PREFIX: u16 = 1 << 4, c "NETRXF_gso_prefix";
    /// Extra info: never used (invalid).
    XEN_NETIF_EXTRA_TYPE_NONE: u8 = 0;
    /// Extra info: GSO.
    XEN_NETIF_EXTRA_TYPE_GSO: u8 = 1;
    /// Extra info: add a multicast address.
    XEN_NETIF_EXTRA_TYPE_MCAST_ADD: u8 = 2;
    /// Extra info: remove a multicast address.
    XEN_NETIF_EXTRA_TYPE_MCAST_DEL: u8 = 3;
    /// Extra info: the packet's hash.
    XEN_NETIF_EXTRA_TYPE_HASH: u8 = 4;
    /// One past the last extra-info type.
    XEN_NETIF_EXTRA_TYPE_MAX: u8 = 5;
    /// Extra info: another extra-info slot follows.
    XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1;
    /// GSO: none.
    XEN_NETIF_GSO_TYPE_NONE: u8 = 0;
    /// GSO: TCP over IPv4.
    XEN_NETIF_GSO_TYPE_TCPV4: u8 = 1;
    /// GSO: TCP over IPv6.
    XEN_NETIF_GSO_TYPE_TCPV6: u8 = 2;
    /// The packet was dropped.
    NETIF_RSP_DROPPED: i16 = -2;
    /// The request failed.
    NETIF_RSP_ERROR: i16 = -1;
    /// The request succeeded.
    NETIF_RSP_OKAY: i16 = 0;
    /// No response: the slot held extra info.
    NETIF_RSP_NULL: i16 = 1;
    /// Control: invalid.
    XEN_NETIF_CTRL_TYPE_INVALID: u16 = 0;
    /// Control: which hash types the backend supports.
    XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS: u16 = 1;
    /// Control: choose hash types.
    XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS: u16 = 2;
    /// Control: set the Toeplitz key.
    XEN_NETIF_CTRL_TYPE_SET_HASH_KEY: u16 = 3;
    /// Control: the largest mapping table.
    XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE: u16 = 4;
    /// Control: size the mapping table.
    XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE: u16 = 5;
    /// Control: fill the mapping table.
    XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING: u16 = 6;
    /// Control: choose the hash algorithm.
    XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM: u16 = 7;
    /// Control: the largest grant-mapping table.
    XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE: u16 = 8;
    /// Control: add grant mappings.
    XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING: u16 = 9;
    /// Control: remove grant mappings.
    XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING: u16 = 10;
    /// Control status: success.
    XEN_NETIF_CTRL_STATUS_SUCCESS: u32 = 0;
    /// Control status: not supported.
    XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED: u32 = 1;
    /// Control status: a parameter is invalid.
    XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER: u32 = 2;
    /// Control status: a buffer is too small.
    XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW: u32 = 3;
    /// Grant mapping flag: map read-only.
    XEN_NETIF_CTRLF_GREF_READONLY: u16 = 1, c "XEN_NETIF_CTRLF_GREF_readonly";
    /// Hash algorithm: none.
    XEN_NETIF_CTRL_HASH_ALGORITHM_NONE: u32 = 0;
    /// Hash algorithm: Toeplitz.
    XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ: u32 = 1;
    /// Hash type bit: IPv4 addresses.
    XEN_NETIF_CTRL_HASH_TYPE_IPV4: u32 = 1 << 0;
    /// Hash type bit: IPv4 addresses and TCP ports.
    XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP: u32 = 1 << 1;
    /// Hash type bit: IPv6 addresses.
    XEN_NETIF_CTRL_HASH_TYPE_IPV6: u32 = 1 << 2;
    /// Hash type bit: IPv6 addresses and TCP ports.
    XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP: u32 = 1 << 3;
}

/// The Toeplitz hash of `buf` with `key`, exactly as `netif.h`'s
/// `xen_netif_toeplitz_hash` computes it (keys shorter than needed are
/// padded with zeros).
pub fn toeplitz_hash(key: &[u8], buf: &[u8]) -> u32 {
    let key_byte = |i: usize| u64::from(key.get(i).copied().unwrap_or(0));
    let mut prefix: u64 = 0;
    for i in 0..8 {
        prefix = (prefix << 8) | key_byte(i);
    }
    let mut hash: u64 = 0;
    for (next_key, &byte) in (8..).zip(buf) {
        let mut byte = byte;
        for _ in 0..8 {
            if byte & 0x80 != 0 {
                hash ^= prefix;
            }
            prefix <<= 1;
            byte <<= 1;
        }
        prefix |= key_byte(next_key);
    }
    (hash >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toeplitz_matches_the_microsoft_rss_verification_vector() {
        // The RSS verification suite's key and its first IPv4 example:
        // 66.9.149.187 -> 161.142.100.80, hash 0x323e8fc2.
        let key = [
            0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3,
            0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3,
            0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
        ];
        let input = [66, 9, 149, 187, 161, 142, 100, 80];
        assert_eq!(toeplitz_hash(&key, &input), 0x323e_8fc2);
    }
}
