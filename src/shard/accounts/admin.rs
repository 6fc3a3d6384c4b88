//! Admin changes to accounts (users created, deposits and withdrawals), on the owner of
//! the account's partition: each prepared in the ledger, logged on the partition's own
//! log under its lock, then applied, or undone if the log did not take it.

use super::AccountRoom;
use crate::accounts::{AccountRecord, TransferPlan};
use crate::shard::core::now_ms;
use crate::shard::log::{voids, Log, Stream};
use crate::shard::projections::hot;
use crate::shard::protocol::{Answer, NotLogged, Refusal};
use crate::engine::units::narrow;
use crate::engine::UserId;

/// Runs an admin change on a partition under its log's lock: prepare, log, apply (or
/// undo). Holding the lock throughout means a snapshot never sees half of one.
async fn with_partition_log<T>(
    room: &AccountRoom,
    partition: u32,
    prepare: impl FnOnce(&mut dyn crate::accounts::HotState) -> Result<(Option<AccountRecord>, T), Refusal>,
    undo: impl FnOnce(&mut dyn crate::accounts::HotState, &AccountRecord),
) -> Result<T, Refusal> {
    let journal = room.logs.borrow().get(&partition).cloned().ok_or_else(|| Refusal::Unavailable("partition not owned here".into()))?;
    let mut journal = journal.write().await.map_err(|e| Refusal::Unavailable(e.to_string()))?;
    let in_doubt = room.in_doubt.borrow().get(&partition).copied();
    if let Some(from) = in_doubt {
        settle_partition(room, partition, &mut journal, from).await.map_err(|e| Refusal::Unavailable(format!("event log unavailable: {e}")))?;
        room.in_doubt.borrow_mut().remove(&partition);
    }
    let before = journal.next_offset();
    let (record, value) = prepare(room.ledger.borrow_mut().as_mut())?;
    let Some(record) = record else { return Ok(value) };
    let bytes = room.log.encode_account(&record, partition);
    let logged = match journal.append(&bytes) {
        // The journal cuts a failed commit; Kafka may still take it (see `voids`).
        Ok(_) => journal.commit().await.map_err(|e| match (&room.log.kafka, e) {
            (_, exchange_io::journal::JournalError::Superseded(why)) => NotLogged::Unknown(why).into(),
            (None, e) => Refusal::Unavailable(format!("event log unavailable: {e}")),
            (Some(_), e) => voids::refuse(&room.log, Stream::Accounts(partition), std::slice::from_ref(&bytes), &e.to_string()).into(),
        }),
        Err(e) => Err(Refusal::Unavailable(e.to_string())),
    };
    let mut accounts = room.ledger.borrow_mut();
    match logged {
        Ok(_) => {
            accounts.apply(&record, true);
            drop(accounts);
            match &record {
                AccountRecord::UserCreated { user, .. } => hot::balance_changed(&room.out, *user, true),
                AccountRecord::Transfer { user, .. } => hot::balance_changed(&room.out, *user, false),
                AccountRecord::Voided { .. } => {}
            }
            Ok(value)
        }
        Err(e) => {
            undo(accounts.as_mut(), &record);
            room.in_doubt.borrow_mut().entry(partition).or_insert(before);
            Err(e)
        }
    }
}

/// Voids what a partition's log took at or after `from` although its requests were
/// answered 503 (as the symbol streams do; see `symbols::stream::run`).
async fn settle_partition(room: &AccountRoom, partition: u32, journal: &mut Log, from: u64) -> Result<(), String> {
    let patience = std::time::Duration::from_millis(room.config.kafka.timeout_ms.max(100));
    let found = journal.read_back(from, patience).await.map_err(|e| e.to_string())?;
    let records: Vec<(u64, AccountRecord)> =
        found.iter().map(|(o, b)| room.log.decode_account(b).map(|r| (*o, r))).collect::<Result<_, _>>()?;
    let voided: Vec<u64> =
        records.iter().filter_map(|(_, r)| if let AccountRecord::Voided { offset } = r { Some(*offset) } else { None }).collect();
    for (offset, record) in &records {
        if !matches!(record, AccountRecord::Voided { .. }) && !voided.contains(offset) {
            journal.append(&room.log.encode_account(&AccountRecord::Voided { offset: *offset }, partition)).map_err(|e| e.to_string())?;
            tracing::warn!(partition, offset, "voided an account record the log took after reporting failure");
        }
    }
    journal.commit().await.map(|_| ()).map_err(|e| e.to_string())
}

pub async fn create_user(room: &AccountRoom, name: &str) -> Result<Answer, Refusal> {
    let mut secret = [0u8; 24];
    getrandom::getrandom(&mut secret).map_err(|e| Refusal::Unavailable(format!("no randomness: {e}")))?;
    let partition = crate::accounts::partition_of_name(name);
    let key = with_partition_log(
        room,
        partition,
        |accounts| {
            let (record, key) = accounts.create_user(name, secret).map_err(Refusal::Admin)?;
            Ok((Some(record), key))
        },
        |accounts, _| accounts.release_user(name),
    )
    .await?;
    tracing::info!(user = name, "user created");
    let api_secret = crate::accounts::secret::secret_of(room.config.signing_secret.as_deref().unwrap_or_default().as_bytes(), &key);
    Ok(Answer::UserCreated { name: name.to_owned(), api_key: key, api_secret })
}

/// A deposit (or withdrawal); the user it was for.
pub async fn transfer(room: &AccountRoom, name: &str, amount: i64, transfer_id: &str) -> Result<UserId, Refusal> {
    let partition = crate::accounts::partition_of_name(name);
    let (user, logged) = with_partition_log(
        room,
        partition,
        |accounts| match accounts.transfer(name, transfer_id, amount, now_ms()).map_err(Refusal::Admin)? {
            TransferPlan::Done(user) => Ok((None, (user, false))),
            TransferPlan::Log(user, record) => Ok((Some(record), (user, true))),
        },
        |accounts, record| accounts.release_transfer(record),
    )
    .await?;
    if let Some(sync) = room.sync.as_ref().filter(|_| logged) {
        sync.deposit(user, amount).await.map_err(|e| Refusal::Unavailable(format!("PostgreSQL (synchronous baseline): {e}")))?;
    }
    if logged {
        crate::shard::projections::feed::transfer(&room.out, user, i128::from(amount));
    }
    tracing::info!(user = name, transfer_id, amount = narrow(i128::from(amount)), "transfer");
    Ok(user)
}
