//! The one CSV dialect Vitrine reads (product and outfit files).

/// Splits one CSV line into fields: commas separate, double quotes enclose
/// a field that holds commas, `""` inside quotes is a quote. Fields may not
/// hold newlines. Fields are returned as written (not trimmed).
///
/// ```
/// assert_eq!(vitrine::split_csv_line(r#"a,"b,c","say ""hi""""#), ["a", "b,c", r#"say "hi""#]);
/// ```
pub fn split_csv_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}
