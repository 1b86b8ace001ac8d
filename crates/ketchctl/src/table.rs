//! The `-w table` layout: what etcdctl's table writer (olekukonko's
//! `tablewriter` with etcdctl's settings: upper-cased centered headers,
//! right-aligned cells, cells wider than 30 columns wrapped at spaces with
//! its minimum-raggedness algorithm) renders.

/// Widest a cell may be before it is wrapped (tablewriter's `MAX_ROW_WIDTH`).
const WRAP_WIDTH: usize = 30;
/// Penalty of a wrapped line longer than the limit (tablewriter's `defaultPenalty`).
const OVERLONG_PENALTY: i64 = 100_000;

/// Renders a table with `header` and `rows`.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let header: Vec<Vec<String>> = header.iter().map(|h| cell_lines(&title(h))).collect();
    let rows: Vec<Vec<Vec<String>>> = rows.iter().map(|row| row.iter().map(|c| cell_lines(c)).collect()).collect();
    let columns = header.len();
    let mut widths = vec![0usize; columns];
    for row in std::iter::once(&header).chain(rows.iter()) {
        for (i, cell) in row.iter().enumerate().take(columns) {
            for line in cell {
                widths[i] = widths[i].max(width(line));
            }
        }
    }
    let mut out = String::new();
    let rule = line(&widths);
    out.push_str(&rule);
    print_row(&mut out, &header, &widths, Align::Center);
    out.push_str(&rule);
    for row in &rows {
        print_row(&mut out, row, &widths, Align::Right);
    }
    out.push_str(&rule);
    out
}

#[derive(Clone, Copy)]
enum Align {
    Center,
    Right,
}

fn line(widths: &[usize]) -> String {
    let mut s = String::from("+");
    for w in widths {
        s.push_str(&"-".repeat(w + 2));
        s.push('+');
    }
    s.push('\n');
    s
}

fn print_row(out: &mut String, row: &[Vec<String>], widths: &[usize], align: Align) {
    let height = row.iter().map(Vec::len).max().unwrap_or(1).max(1);
    for n in 0..height {
        out.push('|');
        for (i, w) in widths.iter().enumerate() {
            let text = row.get(i).and_then(|c| c.get(n)).map_or("", String::as_str);
            let gap = w.saturating_sub(width(text));
            out.push(' ');
            match align {
                Align::Center => {
                    let left = gap / 2;
                    out.push_str(&" ".repeat(left));
                    out.push_str(text);
                    out.push_str(&" ".repeat(gap - left));
                }
                Align::Right => {
                    out.push_str(&" ".repeat(gap));
                    out.push_str(text);
                }
            }
            out.push_str(" |");
        }
        out.push('\n');
    }
}

/// Display width (one column per character; etcdctl's tables hold ASCII).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// tablewriter's `Title`: `_` to space, upper case.
fn title(name: &str) -> String {
    let replaced: String = name.chars().map(|c| if c == '_' { ' ' } else { c }).collect();
    let trimmed = replaced.trim();
    if trimmed.is_empty() && !name.is_empty() { " ".to_string() } else { trimmed.to_uppercase() }
}

/// A cell's lines: its own lines, each wrapped at [`WRAP_WIDTH`].
fn cell_lines(text: &str) -> Vec<String> {
    let raw: Vec<&str> = text.split('\n').collect();
    let max_width = raw.iter().map(|l| width(l)).max().unwrap_or(0).min(WRAP_WIDTH);
    let mut lines = Vec::new();
    for (i, para) in raw.iter().enumerate() {
        if i > 0 {
            lines.push(" ".to_string());
        }
        lines.extend(wrap(para, max_width));
    }
    lines
}

/// tablewriter's `WrapString`: words split at spaces, broken into lines of
/// at most `limit` columns with minimum raggedness.
fn wrap(text: &str, limit: usize) -> Vec<String> {
    let words: Vec<&str> = text.split(' ').collect();
    let n = words.len();
    let widths: Vec<i64> = words.iter().map(|w| width(w) as i64).collect();
    let limit = limit as i64;
    let length = |i: usize, j: usize| -> i64 { widths[i..=j].iter().sum::<i64>() + (j - i) as i64 };
    let mut cost = vec![i64::from(i32::MAX); n];
    let mut next_break = vec![0usize; n];
    for i in (0..n).rev() {
        if length(i, n - 1) <= limit {
            cost[i] = 0;
            next_break[i] = n;
            continue;
        }
        for j in i + 1..n {
            let d = limit - length(i, j - 1);
            let mut c = d * d + cost[j];
            if length(i, j - 1) > limit {
                c += OVERLONG_PENALTY;
            }
            if c < cost[i] {
                cost[i] = c;
                next_break[i] = j;
            }
        }
    }
    let mut lines = Vec::new();
    let mut i = 0;
    while i < n {
        let end = next_break[i].max(i + 1);
        lines.push(words[i..end].join(" "));
        i = end;
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_tablewriter() {
        let got = render(&["endpoint", "hash"], &[vec!["127.0.0.1:24791".into(), "3676572425".into()]]);
        let want = "\
+-----------------+------------+
|    ENDPOINT     |    HASH    |
+-----------------+------------+
| 127.0.0.1:24791 | 3676572425 |
+-----------------+------------+
";
        assert_eq!(got, want);
    }

    #[test]
    fn long_cells_wrap_at_spaces() {
        assert_eq!(wrap("aaaa bbbb cccc", 9), vec!["aaaa bbbb", "cccc"]);
        assert_eq!(wrap("short", 30), vec!["short"]);
        assert_eq!(cell_lines(""), vec![""]);
    }
}
