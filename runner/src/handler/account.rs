//! Who exec children run as: `user` and `group` of `exec = {...}`, looked up
//! in this machine's account database when the function is built (the pure
//! config crate cannot), so an unknown name is a config error with its key
//! path and line, before anything touches NATS.

use std::path::PathBuf;

use anyhow::anyhow;
use jetrun_config::{Account, AccountId, ConfigError, ExecConfig};
use nix::unistd::{getegid, geteuid, Group, Uid, User};

/// The account a function's children run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RunAs {
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// The user's home directory, the child's `HOME`; `None` for a numeric
    /// uid the account database does not know (`HOME` is then unset).
    pub(super) home: Option<PathBuf>,
}

/// `None` when `exec` names no `user`: children run as the runner does.
pub(super) fn resolve(exec: &ExecConfig) -> anyhow::Result<Option<RunAs>> {
    let Some(user) = &exec.user else {
        return Ok(None);
    };
    let (uid, entry) = match &user.id {
        AccountId::Name(name) => match User::from_name(name) {
            Ok(Some(entry)) => (entry.uid.as_raw(), Some(entry)),
            Ok(None) => {
                return Err(error(
                    user,
                    format!("{name:?} is not a user on this machine"),
                ))
            }
            Err(err) => return Err(error(user, format!("cannot look up user {name:?}: {err}"))),
        },
        AccountId::Id(uid) => (*uid, User::from_uid(Uid::from_raw(*uid)).ok().flatten()),
    };
    let gid = match (&exec.group, &entry) {
        (Some(group), _) => group_id(group)?,
        (None, Some(entry)) => entry.gid.as_raw(),
        (None, None) => {
            return Err(error(
                user,
                format!(
                    "{uid} has no entry in the user database, so no primary group; add \
                     group = \"...\""
                ),
            ))
        }
    };
    permitted(exec, user, uid, gid)?;
    Ok(Some(RunAs {
        uid,
        gid,
        home: entry.map(|entry| entry.dir),
    }))
}

/// The gid of `group`; a numeric id the group database does not know is
/// taken as it is.
fn group_id(group: &Account) -> anyhow::Result<u32> {
    match &group.id {
        AccountId::Id(gid) => Ok(*gid),
        AccountId::Name(name) => match Group::from_name(name) {
            Ok(Some(entry)) => Ok(entry.gid.as_raw()),
            Ok(None) => Err(error(
                group,
                format!("{name:?} is not a group on this machine"),
            )),
            Err(err) => Err(error(
                group,
                format!("cannot look up group {name:?}: {err}"),
            )),
        },
    }
}

/// Only root may start a process as another account; a runner that is not
/// root fails here, at start, rather than on every event.
fn permitted(exec: &ExecConfig, user: &Account, uid: u32, gid: u32) -> anyhow::Result<()> {
    let (euid, egid) = (geteuid(), getegid());
    if euid.is_root() {
        return Ok(());
    }
    if uid != euid.as_raw() {
        return Err(error(
            user,
            format!(
                "{} cannot be used: only root can start a process as another user, and \
                 jetrun runs as uid {euid}; run jetrun as root, or remove user",
                shown(&user.id)
            ),
        ));
    }
    if gid != egid.as_raw() {
        let (account, what) = match &exec.group {
            Some(group) => (group, shown(&group.id)),
            None => (user, format!("{} (primary group {gid})", shown(&user.id))),
        };
        return Err(error(
            account,
            format!(
                "{what} cannot be used: only root can start a process in another group, \
                 and jetrun runs as gid {egid}; run jetrun as root, or remove user and group"
            ),
        ));
    }
    Ok(())
}

/// A user or group as the file wrote it: `"nobody"` or `65534`.
fn shown(id: &AccountId) -> String {
    match id {
        AccountId::Name(name) => format!("{name:?}"),
        AccountId::Id(id) => id.to_string(),
    }
}

/// An error worded like the config crate's: `{path} {message} (line N)`.
fn error(account: &Account, message: String) -> anyhow::Error {
    anyhow!(
        "{}",
        ConfigError {
            path: account.path.clone(),
            line: Some(account.line),
            message,
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(user: Option<AccountId>, group: Option<AccountId>) -> ExecConfig {
        let account = |id, key: &str| Account {
            id,
            path: format!("functions.f.exec.{key}"),
            line: 7,
        };
        ExecConfig {
            command: vec!["true".into()],
            env: Default::default(),
            mode: jetrun_config::ExecMode::PerEvent,
            workers: 1,
            dir: PathBuf::from("/"),
            user: user.map(|id| account(id, "user")),
            group: group.map(|id| account(id, "group")),
        }
    }

    #[test]
    fn no_user_is_the_runner_itself() {
        assert_eq!(resolve(&exec(None, None)).unwrap(), None);
    }

    #[test]
    fn unknown_names_are_config_errors_with_path_and_line() {
        let user = resolve(&exec(Some(AccountId::Name("no-such-user-x".into())), None));
        assert_eq!(
            user.unwrap_err().to_string(),
            "functions.f.exec.user \"no-such-user-x\" is not a user on this machine (line 7)"
        );
        let own = Uid::current().as_raw();
        let group = resolve(&exec(
            Some(AccountId::Id(own)),
            Some(AccountId::Name("no-such-group-x".into())),
        ));
        assert_eq!(
            group.unwrap_err().to_string(),
            "functions.f.exec.group \"no-such-group-x\" is not a group on this machine (line 7)"
        );
    }

    #[test]
    fn the_runner_own_account_needs_no_root() {
        let (uid, gid) = (geteuid().as_raw(), getegid().as_raw());
        let run_as = resolve(&exec(Some(AccountId::Id(uid)), Some(AccountId::Id(gid))))
            .unwrap()
            .expect("a user was set");
        assert_eq!((run_as.uid, run_as.gid), (uid, gid));
    }
}
