//! Transaction keys: which transaction a message belongs to (RFC 3261 §17.1.3 and §17.2.3).
//!
//! - Server side (§17.2.3): a request matches a server transaction when the top Via `branch`
//!   (starting with the magic cookie `z9hG4bK`), the top Via `sent-by`, and the method are those
//!   of the request that created it — except that an ACK matches the INVITE it acknowledges, so its
//!   key uses method `INVITE`. A CANCEL has its own transaction (key method `CANCEL`); the
//!   INVITE it cancels is found with [`TransactionKey::cancelled_invite`] (§9.2).
//! - Client side (§17.1.3): a response matches a client transaction when its top Via `branch` and
//!   its CSeq method are those of the request; sent-by plays no part, so it is left empty.
//!
//! The endpoint keeps client and server keys in separate tables. In: strings the parser took from
//! the top Via and the CSeq/request line. Out: a hashable key. Nothing here touches the wire.

use std::fmt;

/// The RFC 3261 branch prefix (§8.1.1.7) that makes a branch globally unique.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// Identifies one transaction: the branch, the sent-by (server side only) and the method.
///
/// Branch and method are compared exactly: both are case-sensitive tokens (RFC 3261 §7.1, §20.42).
/// The sent-by host is compared case-insensitively (host names are, §19.1.4), so it is stored in
/// ASCII lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionKey {
    /// The top Via `branch` parameter, exactly as received or sent.
    pub branch: String,
    /// The top Via sent-by (`host[:port]`, lower case); empty for client keys.
    pub sent_by: String,
    /// The method of the transaction: `INVITE` for an ACK on the server side.
    pub method: String,
}

impl TransactionKey {
    /// The key of the server transaction a received request belongs to (RFC 3261 §17.2.3).
    ///
    /// `method` is the request's method; an `ACK` yields the key of the INVITE it acknowledges.
    /// A branch without the magic cookie comes from an RFC 2543 peer and needs the older matching
    /// rules (§17.2.3, last paragraphs): check [`TransactionKey::has_magic_cookie`] first.
    pub fn server(branch: &str, sent_by: &str, method: &str) -> Self {
        let method = if method == "ACK" { "INVITE" } else { method };
        TransactionKey {
            branch: branch.to_owned(),
            sent_by: sent_by.to_ascii_lowercase(),
            method: method.to_owned(),
        }
    }

    /// The key of the client transaction a received response belongs to (RFC 3261 §17.1.3):
    /// the top Via branch and the CSeq method.
    pub fn client(branch: &str, cseq_method: &str) -> Self {
        TransactionKey {
            branch: branch.to_owned(),
            sent_by: String::new(),
            method: cseq_method.to_owned(),
        }
    }

    /// For a CANCEL's server key, the key of the INVITE server transaction it cancels: same
    /// branch and sent-by, method `INVITE` (RFC 3261 §9.2).
    pub fn cancelled_invite(&self) -> Self {
        TransactionKey {
            branch: self.branch.clone(),
            sent_by: self.sent_by.clone(),
            method: "INVITE".to_owned(),
        }
    }

    /// Whether the branch starts with `z9hG4bK`, i.e. the peer follows RFC 3261 matching rules.
    pub fn has_magic_cookie(&self) -> bool {
        self.branch.starts_with(MAGIC_COOKIE)
    }
}

impl fmt::Display for TransactionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sent_by.is_empty() {
            write!(f, "{} {}", self.method, self.branch)
        } else {
            write!(f, "{} {} {}", self.method, self.branch, self.sent_by)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRANCH: &str = "z9hG4bK776asdhds";

    #[test]
    fn ack_matches_the_invite_server_transaction() {
        let invite = TransactionKey::server(BRANCH, "pbx.example.com:5060", "INVITE");
        let ack = TransactionKey::server(BRANCH, "pbx.example.com:5060", "ACK");
        assert_eq!(ack, invite);
        assert_eq!(ack.method, "INVITE");
    }

    #[test]
    fn cancel_has_its_own_server_transaction() {
        let invite = TransactionKey::server(BRANCH, "pbx.example.com:5060", "INVITE");
        let cancel = TransactionKey::server(BRANCH, "pbx.example.com:5060", "CANCEL");
        assert_ne!(cancel, invite);
        assert_eq!(cancel.method, "CANCEL");
    }

    #[test]
    fn cancel_finds_the_invite_it_cancels() {
        let invite = TransactionKey::server(BRANCH, "pbx.example.com:5060", "INVITE");
        let cancel = TransactionKey::server(BRANCH, "pbx.example.com:5060", "CANCEL");
        assert_eq!(cancel.cancelled_invite(), invite);
    }

    #[test]
    fn branch_is_compared_exactly() {
        let lower = TransactionKey::server("z9hG4bKabc", "10.0.0.1:5060", "INVITE");
        let upper = TransactionKey::server("z9hG4bKABC", "10.0.0.1:5060", "INVITE");
        assert_ne!(lower, upper);
    }

    #[test]
    fn method_is_compared_exactly() {
        let options = TransactionKey::server(BRANCH, "10.0.0.1:5060", "OPTIONS");
        let lower = TransactionKey::server(BRANCH, "10.0.0.1:5060", "options");
        assert_ne!(options, lower);
    }

    #[test]
    fn sent_by_host_is_case_insensitive() {
        let lower = TransactionKey::server(BRANCH, "pbx.example.com:5060", "INVITE");
        let mixed = TransactionKey::server(BRANCH, "PBX.Example.COM:5060", "INVITE");
        assert_eq!(lower, mixed);
        assert_eq!(mixed.sent_by, "pbx.example.com:5060");
    }

    #[test]
    fn same_branch_from_another_sent_by_is_another_transaction() {
        let first = TransactionKey::server(BRANCH, "10.0.0.1:5060", "INVITE");
        let second = TransactionKey::server(BRANCH, "10.0.0.2:5060", "INVITE");
        assert_ne!(first, second);
    }

    #[test]
    fn client_key_matches_on_branch_and_cseq_method() {
        let request = TransactionKey::client(BRANCH, "INVITE");
        assert_eq!(TransactionKey::client(BRANCH, "INVITE"), request);
        assert_ne!(TransactionKey::client(BRANCH, "CANCEL"), request);
        assert_ne!(TransactionKey::client("z9hG4bKother", "INVITE"), request);
        assert_eq!(request.sent_by, "");
    }

    #[test]
    fn detects_rfc_2543_branches_without_magic_cookie() {
        assert!(TransactionKey::client(BRANCH, "INVITE").has_magic_cookie());
        assert!(!TransactionKey::client("776asdhds", "INVITE").has_magic_cookie());
        assert!(!TransactionKey::client("z9hg4bk776", "INVITE").has_magic_cookie());
    }

    #[test]
    fn displays_method_branch_and_sent_by() {
        let server = TransactionKey::server(BRANCH, "10.0.0.1:5060", "ACK");
        assert_eq!(server.to_string(), "INVITE z9hG4bK776asdhds 10.0.0.1:5060");
        let client = TransactionKey::client(BRANCH, "BYE");
        assert_eq!(client.to_string(), "BYE z9hG4bK776asdhds");
    }
}
