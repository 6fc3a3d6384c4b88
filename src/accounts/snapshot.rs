//! Writing an account partition's snapshot straight from the live state.
//!
//! [`PartitionStateRef`] mirrors [`super::PartitionState`] field for field with borrowed
//! data, so it encodes to the same bytes without copying the accounts; [`AccountRef`]
//! leaves out reservations the log has not confirmed.

use serde::Serialize;

use super::{Account, UserId};
use crate::engine::units::Units;

/// [`super::PartitionState`] borrowed from the live state, field for field, for writing.
#[derive(Serialize)]
pub(super) struct PartitionStateRef<'a> {
    pub log_offset: u64,
    pub applied: Vec<(&'a String, u64)>,
    pub next_number: u32,
    pub users: Vec<(UserId, AccountRef<'a>)>,
    pub transfers: Vec<(&'a String, &'a (UserId, Units))>,
}

/// An [`Account`] as it belongs in a snapshot: reservations not yet confirmed by the log
/// are left out (if their order was logged, replaying the log locks them again).
pub(super) struct AccountRef<'a>(pub &'a Account);

impl Serialize for AccountRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeStruct};
        struct Logged<'a>(&'a Account);
        impl Serialize for Logged<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let logged = self.0.orders.iter().filter(|(_, v)| v.logged);
                let mut map = s.serialize_map(Some(logged.clone().count()))?;
                for (id, v) in logged {
                    map.serialize_entry(id, v)?;
                }
                map.end()
            }
        }
        struct LoggedIds<'a>(&'a Account);
        impl Serialize for LoggedIds<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let a = self.0;
                let kept = a.client_ids.iter().filter(|(_, id)| a.orders.get(id).is_none_or(|v| v.logged));
                let mut map = s.serialize_map(Some(kept.clone().count()))?;
                for (cid, id) in kept {
                    map.serialize_entry(cid, id)?;
                }
                map.end()
            }
        }
        let a = self.0;
        let pending: i128 = a.orders.values().map(|v| if v.logged { i128::from(v.amending) } else { i128::from(v.reserved) }).sum();
        let mut st = s.serialize_struct("Account", 11)?;
        st.serialize_field("name", &a.name)?;
        st.serialize_field("key_hash", &a.key_hash)?;
        st.serialize_field("total", &a.total)?;
        st.serialize_field("locked", &(a.locked - pending))?;
        st.serialize_field("positions", &a.positions)?;
        st.serialize_field("orders", &Logged(a))?;
        st.serialize_field("client_ids", &LoggedIds(a))?;
        st.serialize_field("closed", &a.closed)?;
        st.serialize_field("fills", &a.fills)?;
        st.serialize_field("rate_window", &a.rate_window)?;
        st.serialize_field("rate_count", &a.rate_count)?;
        st.end()
    }
}

