//! "Did you mean" ranking and the small formatters used by error messages.

/// Up to `n` candidates that look like `query`, best first: compiler clones of
/// it (`query.constprop.0`), then names containing it (or contained in it),
/// then names within a small edit distance or sharing a long prefix.
pub(crate) fn similar<'a>(
    query: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    n: usize,
) -> Vec<String> {
    let max_dist = (query.len() / 4).max(2);
    let mut scored: Vec<(usize, usize, &str)> = candidates
        .into_iter()
        .filter(|&c| c != query)
        .filter_map(|c| {
            if c.strip_prefix(query)
                .is_some_and(|rest| rest.starts_with('.'))
            {
                return Some((0, c.len(), c));
            }
            if query.len() >= 4 && c.contains(query) || c.len() >= 4 && query.contains(c) {
                return Some((1, c.len().abs_diff(query.len()), c));
            }
            let prefix = common_prefix(query, c);
            if c.len().abs_diff(query.len()) <= max_dist {
                let d = levenshtein(query, c);
                if d <= max_dist {
                    return Some((2, d, c));
                }
            }
            (prefix >= 6 && prefix * 3 >= query.len() * 2).then(|| (3, query.len() - prefix, c))
        })
        .collect();
    scored.sort_unstable();
    scored.dedup_by(|a, b| a.2 == b.2);
    scored
        .into_iter()
        .take(n)
        .map(|(_, _, c)| c.to_string())
        .collect()
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(ca != cb));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

pub(crate) fn did_you_mean(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; did you mean: {}?", s.join(", "))
    }
}

pub(crate) fn instead(s: &[String]) -> String {
    if s.is_empty() {
        "; no out-of-line caller or similarly named function found".to_string()
    } else {
        format!(
            "; break on an out-of-line neighbour instead: {}",
            s.join(", ")
        )
    }
}

pub(crate) fn hex_list(addrs: &[u64]) -> String {
    addrs
        .iter()
        .map(|a| format!("{a:#x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn nearby_lines(lines: &[u64]) -> String {
    if lines.is_empty() {
        "; the file has no line with code at all".to_string()
    } else {
        let l: Vec<String> = lines.iter().map(u64::to_string).collect();
        format!("; nearby lines with code: {}", l.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("same", "same"), 0);
    }

    #[test]
    fn ranking() {
        let names = [
            "start_kernel",
            "start_kernel.cold",
            "restart_kernel_now",
            "stat_kernel",
            "unrelated",
            "start_kern",
        ];
        let got = similar("start_kernel", names, 5);
        assert_eq!(
            got,
            [
                "start_kernel.cold",
                "start_kern",
                "restart_kernel_now",
                "stat_kernel"
            ]
        );
        assert!(similar("zzzzzz", names, 5).is_empty());
    }
}
