//! Sinks: views mirrored into systems outside the cluster, kept exactly equal to the views
//! as of a frontier that the sink records next to the data.
//!
//! [`postgres`] mirrors chosen views into PostgreSQL tables, one transaction per frontier
//! step, so that a BI tool reading the tables sees a consistent state of every mirrored
//! view as of one time, and a restart of the worker or of PostgreSQL neither loses nor
//! repeats a change.

pub mod postgres;
