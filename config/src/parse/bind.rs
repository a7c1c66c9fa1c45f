//! Binding functions to streams: which stream each function's consumer lives
//! on (a scheduled function's: the schedules stream), whether its dead letters land in a stream (and not back in its own
//! input), and whether functions sharing a work-queue stream stay apart.

use toml::Spanned;

use super::function::Draft;
use super::section::{join, Ctx, Read, Reported};
use super::streams::Streams;
use crate::model::Retention;
use crate::subject;

/// Where a function's consumer lives and where its dead letters go.
pub(super) struct Binding {
    pub(super) stream: String,
    /// `false` when the stream is one jetrun does not declare.
    pub(super) managed: bool,
    pub(super) dead_letter: String,
}

/// The binding of each draft, in order; `None` for a request function,
/// which consumes no stream and dead-letters nothing.
pub(super) fn bind(
    ctx: &mut Ctx<'_>,
    drafts: &[Draft],
    streams: &Streams,
) -> Vec<Read<Option<Binding>>> {
    let bindings: Vec<Read<Option<Binding>>> = drafts
        .iter()
        .map(|draft| {
            if draft.request.is_some() {
                return Ok(None);
            }
            let stream = match &draft.schedule {
                Ok(None) => stream_of(ctx, draft, streams),
                Ok(Some(_)) => scheduled(draft, streams),
                Err(reported) => Err(*reported),
            };
            let dead_letter = dead_letter(ctx, draft, streams);
            let (stream, managed) = stream?;
            Ok(Some(Binding {
                stream,
                managed,
                dead_letter: dead_letter?,
            }))
        })
        .collect();
    work_queues_apart(ctx, drafts, &bindings, streams);
    bindings
}

/// The stream holding every subject of the function, and whether jetrun
/// declares it.
fn stream_of(ctx: &mut Ctx<'_>, draft: &Draft, streams: &Streams) -> Read<(String, bool)> {
    let subjects = draft.subjects.as_ref().map_err(|r| *r)?;
    let path = join(&draft.path, "subjects");
    if let Some(named) = draft.stream.as_ref().map_err(|r| *r)? {
        let name = named.get_ref();
        let Some(held) = streams.subjects.get(name) else {
            if streams.names.contains(name) {
                // Declared, but its subjects are wrong: reported there.
                return Err(Reported);
            }
            return Ok((name.clone(), false));
        };
        let mut failed = false;
        for s in subjects {
            if !held
                .iter()
                .any(|h| subject::captures(h.get_ref(), s.get_ref()))
            {
                ctx.error(
                    path.clone(),
                    Some(&s.span()),
                    format!(
                        "{:?} is not captured by stream {name}, which stream = {name:?} names; \
                         add it to that stream's subjects",
                        s.get_ref()
                    ),
                );
                failed = true;
            }
        }
        return if failed {
            Err(Reported)
        } else {
            Ok((name.clone(), true))
        };
    }

    let mut first: Option<(&Spanned<String>, &str)> = None;
    let mut failed = false;
    for s in subjects {
        match (streams.capturing(s.get_ref()), first) {
            (None, _) => {
                if streams.complete {
                    ctx.error(
                        path.clone(),
                        Some(&s.span()),
                        format!(
                            "{:?} is not captured by any [streams.*] entry; add it to a \
                             stream's subjects or name an existing stream with stream = \"...\"",
                            s.get_ref()
                        ),
                    );
                }
                failed = true;
            }
            (Some(stream), None) => first = Some((s, stream)),
            (Some(stream), Some((earlier, earlier_stream))) if stream != earlier_stream => {
                ctx.error(
                    path.clone(),
                    Some(&s.span()),
                    format!(
                        "{:?} is captured by stream {stream}, but {:?} is captured by stream \
                         {earlier_stream}; a function's consumer lives on one stream, so split \
                         it into one function per stream",
                        s.get_ref(),
                        earlier.get_ref(),
                    ),
                );
                failed = true;
            }
            (Some(_), Some(_)) => {}
        }
    }
    match first {
        Some((_, stream)) if !failed => Ok((stream.to_owned(), true)),
        _ => Err(Reported),
    }
}

/// A scheduled function's stream: the schedules stream, which jetrun makes
/// and manages (`stream = ...` beside `schedule` is reported as read).
fn scheduled(draft: &Draft, streams: &Streams) -> Read<(String, bool)> {
    draft.stream.as_ref().map_err(|r| *r)?;
    let stream = streams.schedules_stream.clone().ok_or(Reported)?;
    Ok((stream, true))
}

/// `dead_letter`, or `dlq.<name>`: captured by `dlq.>` or a declared stream,
/// and not one of the function's own subjects.
fn dead_letter(ctx: &mut Ctx<'_>, draft: &Draft, streams: &Streams) -> Read<String> {
    let explicit = draft.dead_letter.as_ref().map_err(|r| *r)?;
    let (subject, span) = match explicit {
        Some(s) => (s.get_ref().clone(), Some(s.span())),
        None => (
            streams.dead_letters.subject(&draft.name),
            draft.span.clone(),
        ),
    };
    let path = join(&draft.path, "dead_letter");
    let dlq_subjects = streams.dead_letters.subjects();
    if !subject::captures(&dlq_subjects, &subject) && streams.capturing(&subject).is_none() {
        if !streams.complete {
            return Err(Reported);
        }
        return Err(ctx.error(
            path,
            span.as_ref(),
            format!(
                "{subject:?} is not captured by {dlq_subjects} or by any [streams.*] entry, so \
                 dead letters would be lost; use a subject under {}. or add it to a stream's \
                 subjects",
                streams.dead_letters.prefix
            ),
        ));
    }
    if let Ok(subjects) = &draft.subjects {
        if let Some(own) = subjects
            .iter()
            .find(|own| subject::overlaps(own.get_ref(), &subject))
        {
            return Err(ctx.error(
                path,
                span.as_ref(),
                format!(
                    "{subject:?} is matched by the function's own subject {:?}, so its dead \
                     letters would come back to it; pick another dead_letter",
                    own.get_ref()
                ),
            ));
        }
    }
    Ok(subject)
}

/// On a work-queue stream a message goes to one consumer only, so JetStream
/// refuses two consumers whose filters overlap.
fn work_queues_apart(
    ctx: &mut Ctx<'_>,
    drafts: &[Draft],
    bindings: &[Read<Option<Binding>>],
    streams: &Streams,
) {
    let bound: Vec<(&Draft, &Binding)> = drafts
        .iter()
        .zip(bindings)
        .filter_map(|(draft, binding)| Some((draft, binding.as_ref().ok()?.as_ref()?)))
        .filter(|(_, binding)| {
            binding.managed
                && streams
                    .configs
                    .get(&binding.stream)
                    .is_some_and(|s| s.retention == Retention::WorkQueue)
        })
        .collect();
    for (i, (draft, binding)) in bound.iter().enumerate() {
        let Ok(subjects) = &draft.subjects else {
            continue;
        };
        for s in subjects {
            let clash = bound[..i]
                .iter()
                .filter(|(_, other)| other.stream == binding.stream)
                .find_map(|(other, _)| {
                    let theirs = other.subjects.as_ref().ok()?;
                    let t = theirs
                        .iter()
                        .find(|t| subject::overlaps(t.get_ref(), s.get_ref()))?;
                    Some((other, t))
                });
            if let Some((other, theirs)) = clash {
                ctx.error(
                    join(&draft.path, "subjects"),
                    Some(&s.span()),
                    format!(
                        "{:?} overlaps {:?} of {}; stream {} has retention = \"workqueue\", \
                         where each message goes to one consumer only",
                        s.get_ref(),
                        theirs.get_ref(),
                        other.path,
                        binding.stream
                    ),
                );
            }
        }
    }
}
