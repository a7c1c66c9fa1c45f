//! What a new config changes against what runs: which named parts (functions,
//! sagas) are added, removed, changed or left as they are. Pure.

use std::collections::BTreeMap;

/// What a reload does to one kind of part, by name.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Diff {
    pub(crate) added: Vec<String>,
    pub(crate) removed: Vec<String>,
    pub(crate) changed: Vec<String>,
    pub(crate) unchanged: usize,
}

/// From `running` to `wanted`, each a name and its config.
pub(crate) fn diff<'a, C: PartialEq + 'a>(
    running: impl IntoIterator<Item = (&'a str, &'a C)>,
    wanted: impl IntoIterator<Item = (&'a str, &'a C)>,
) -> Diff {
    let running: BTreeMap<&str, &C> = running.into_iter().collect();
    let mut diff = Diff::default();
    let mut kept = Vec::new();
    for (name, config) in wanted {
        kept.push(name);
        match running.get(name) {
            Some(running) if *running == config => diff.unchanged += 1,
            Some(_) => diff.changed.push(name.to_string()),
            None => diff.added.push(name.to_string()),
        }
    }
    diff.removed = running
        .keys()
        .filter(|name| !kept.contains(*name))
        .map(|name| name.to_string())
        .collect();
    diff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_removed_changed_and_unchanged() {
        let running = [("keep", &1), ("change", &2), ("drop", &3)];
        let wanted = [("keep", &1), ("change", &20), ("new", &4)];
        assert_eq!(
            diff(running, wanted),
            Diff {
                added: vec!["new".into()],
                removed: vec!["drop".into()],
                changed: vec!["change".into()],
                unchanged: 1,
            }
        );
    }

    #[test]
    fn from_nothing_everything_is_added() {
        let d = diff([], [("a", &1), ("b", &2)]);
        assert_eq!(d.added, ["a", "b"]);
        assert!(d.removed.is_empty() && d.changed.is_empty());
        assert_eq!(d.unchanged, 0);
    }
}
