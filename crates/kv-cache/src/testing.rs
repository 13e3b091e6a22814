//! Conformance kit for [`KvCache`](crate::KvCache) implementations (issue 3).
