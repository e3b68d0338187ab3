//! iptables-restore and ipset-restore text (placeholder module, filled in below).
