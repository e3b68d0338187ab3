//! Userdata nft attaches to sets and elements (libnftnl `udata.h` TLVs: u8 type, u8 length,
//! value; integers in host order): key byte order, `typeof`, comments, open intervals. The
//! kernel keeps it opaque; `nft list` reads it back to print sets as they were written.

pub(super) const UDATA_SET_KEYBYTEORDER: u8 = 0;
pub(super) const UDATA_SET_DATABYTEORDER: u8 = 1;
pub(super) const UDATA_SET_MERGE_ELEMENTS: u8 = 2;
pub(super) const UDATA_SET_KEY_TYPEOF: u8 = 3;
pub(super) const UDATA_SET_DATA_INTERVAL: u8 = 6;
pub(super) const UDATA_SET_COMMENT: u8 = 7;
pub(super) const UDATA_SET_TYPEOF_EXPR: u8 = 0;
pub(super) const UDATA_SET_TYPEOF_DATA: u8 = 1;
pub(super) const UDATA_SET_ELEM_FLAGS: u8 = 1;
/// `NFTNL_SET_ELEM_F_INTERVAL_OPEN`
pub(super) const SET_ELEM_F_INTERVAL_OPEN: u32 = 1;
/// nftables `enum byteorder`.
pub(super) const BYTEORDER_HOST_ENDIAN: u32 = 1;
pub(super) const BYTEORDER_BIG_ENDIAN: u32 = 2;
/// nftables `enum expr_types`: EXPR_PAYLOAD, EXPR_CONCAT.
pub(super) const EXPR_PAYLOAD: u32 = 7;
pub(super) const EXPR_CONCAT: u32 = 13;
/// nftables `enum proto_desc_id`.
pub(super) const PROTO_DESC_UDP: u32 = 6;
pub(super) const PROTO_DESC_TCP: u32 = 8;
pub(super) const PROTO_DESC_SCTP: u32 = 10;
pub(super) const PROTO_DESC_IP: u32 = 12;
pub(super) const PROTO_DESC_IP6: u32 = 13;
pub(super) const PROTO_DESC_ICMPV6: u32 = 14;
pub(super) const PROTO_DESC_ARP: u32 = 15;
/// Header field indexes in nft's protocol templates.
pub(super) const IPHDR_SADDR: u32 = 11;
pub(super) const IPHDR_DADDR: u32 = 12;
pub(super) const IP6HDR_SADDR: u32 = 8;
pub(super) const IP6HDR_DADDR: u32 = 9;
pub(super) const THDR_DPORT: u32 = 2;
/// `icmpv6 type`
pub(super) const ICMP6HDR_TYPE: u32 = 1;
/// `arp saddr ip`: the sender's protocol address.
pub(super) const ARPHDR_SADDR_IP: u32 = 7;

/// A userdata buffer being built.
#[derive(Default)]
pub(crate) struct Udata(Vec<u8>);

impl Udata {
    pub(super) fn put(&mut self, ty: u8, value: &[u8]) -> &mut Self {
        let len = u8::try_from(value.len()).expect("userdata attribute longer than 255 bytes");
        self.0.push(ty);
        self.0.push(len);
        self.0.extend_from_slice(value);
        self
    }

    pub(super) fn put_u32(&mut self, ty: u8, v: u32) -> &mut Self {
        self.put(ty, &v.to_ne_bytes())
    }

    pub(super) fn put_strz(&mut self, ty: u8, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(ty, &v)
    }

    pub(super) fn nest(&mut self, ty: u8, f: impl FnOnce(&mut Udata)) -> &mut Self {
        let mut inner = Udata::default();
        f(&mut inner);
        self.put(ty, &inner.0)
    }

    pub(super) fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// `typeof PAYLOAD`: the expression nft records so that it can print anonymous sets back.
pub(super) fn typeof_payload(u: &mut Udata, desc: u32, field: u32) {
    u.nest(UDATA_SET_KEY_TYPEOF, |n| {
        n.put_u32(UDATA_SET_TYPEOF_EXPR, EXPR_PAYLOAD);
        n.nest(UDATA_SET_TYPEOF_DATA, |d| {
            d.put_u32(0, desc);
            d.put_u32(1, field);
        });
    });
}
