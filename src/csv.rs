//! The one CSV dialect Vitrine reads (product and outfit files).
//!
//! Commas separate fields; a field that starts with a double quote (after
//! spaces, which are dropped) is quoted, and may then hold commas, line
//! breaks and `""` for a quote. A
//! quote inside an unquoted field is an ordinary character (`12" sleeve`),
//! so one stray quote cannot swallow the rest of the file. Lines end in
//! `\n` or `\r\n` (carriage returns before a line end, or at the end of
//! the text, are dropped); a carriage return followed by other text
//! outside quotes (an old Mac's line end, or a mix of endings) is an
//! error, not a character of a value that would join two rows; a leading
//! byte-order mark (Excel's "CSV UTF-8") is
//! skipped; blank lines are skipped. Fields are returned as written (not
//! trimmed).

use std::fmt;

/// One record of a CSV text and the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvRecord {
    /// The line of the text where the record starts (1-based).
    pub line: usize,
    /// The fields, untrimmed, quotes removed.
    pub fields: Vec<String>,
}

/// Fields a record may have: far more than any catalog's columns, and a
/// bound on the memory of one record (each field is a `String`, 24 bytes
/// even when empty: a line of a hundred million commas would take
/// gigabytes).
pub const MAX_CSV_FIELDS: usize = 10_000;

/// A CSV text that cannot be read; the records before it were.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CsvError {
    /// A quoted field is never closed.
    UnclosedQuote {
        /// The line where the quoted field opens (1-based).
        line: usize,
    },
    /// A record has more than [`MAX_CSV_FIELDS`] fields.
    TooManyFields {
        /// The line where the record starts (1-based).
        line: usize,
    },
    /// A carriage return not followed by a line feed, outside quotes.
    BareCarriageReturn {
        /// The line where it is (1-based).
        line: usize,
    },
}

impl CsvError {
    /// The line of the text where the error is (1-based).
    pub fn line(&self) -> usize {
        match *self {
            CsvError::UnclosedQuote { line }
            | CsvError::TooManyFields { line }
            | CsvError::BareCarriageReturn { line } => line,
        }
    }
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CsvError::UnclosedQuote { line } => {
                write!(f, "the quoted field opened on line {line} is never closed")
            }
            CsvError::TooManyFields { line } => write!(
                f,
                "the record on line {line} has more than {MAX_CSV_FIELDS} fields"
            ),
            CsvError::BareCarriageReturn { line } => write!(
                f,
                "line {line} holds a carriage return without a line feed: lines must end \
                 with LF or CRLF (an old Mac export? save the file again as CSV UTF-8)"
            ),
        }
    }
}

impl std::error::Error for CsvError {}

/// Parses a CSV text into records (see the module docs for the dialect).
/// [`csv_records`] reads them one at a time.
///
/// ```
/// let text = "\u{feff}id,name\n1,\"Striped, slim\"\r\n\n2,\"two\nlines\"\n3,12\" sleeve\n";
/// let records = vitrine::parse_csv(text)?;
/// assert_eq!(records.len(), 4);
/// assert_eq!(records[0].fields, ["id", "name"]);
/// assert_eq!(records[1].fields, ["1", "Striped, slim"]);
/// assert_eq!((records[2].line, records[2].fields[1].as_str()), (4, "two\nlines"));
/// assert_eq!((records[3].line, records[3].fields[1].as_str()), (6, "12\" sleeve"));
/// assert!(vitrine::parse_csv("a,\"open\nb,c\n").is_err());
/// # Ok::<(), vitrine::CsvError>(())
/// ```
pub fn parse_csv(text: &str) -> Result<Vec<CsvRecord>, CsvError> {
    csv_records(text).collect()
}

/// The records of a CSV text, one at a time: a large file's rows can be
/// checked and dropped as they are read, instead of all being held at once
/// (a row of many empty cells takes many times its bytes as strings). An
/// error (an unclosed quote, a record of too many fields) is the last item.
///
/// ```
/// let mut records = vitrine::csv_records("id,name\n1,\"a\n2,b\n");
/// assert_eq!(records.next().unwrap()?.fields, ["id", "name"]);
/// assert_eq!(records.next().unwrap().unwrap_err().line(), 2);
/// assert!(records.next().is_none());
/// # Ok::<(), vitrine::CsvError>(())
/// ```
pub fn csv_records(text: &str) -> CsvRecords<'_> {
    CsvRecords {
        chars: text
            .strip_prefix('\u{feff}')
            .unwrap_or(text)
            .chars()
            .peekable(),
        line: 1,
        width: 0,
        done: false,
    }
}

/// The iterator of [`csv_records`].
#[derive(Debug, Clone)]
pub struct CsvRecords<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    /// The line being read (1-based).
    line: usize,
    /// The previous record's field count: the next one's capacity, so that
    /// rows of a file hold no spare slots.
    width: usize,
    done: bool,
}

impl Iterator for CsvRecords<'_> {
    type Item = Result<CsvRecord, CsvError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Each field is copied out at its exact length; this buffer is
        // reused.
        let mut cur = String::new();
        while !self.done {
            let start = self.line;
            let mut fields = Vec::with_capacity(self.width);
            cur.clear();
            let mut quoted_since: Option<usize> = None;
            // Whether the current field has had its quoted part, and whether
            // it holds only spaces so far (kept, not rescanned: a long field
            // with many quotes would take quadratic time).
            let mut quoted_part = false;
            let mut blank = true;
            let mut ended = false;
            while let Some(c) = self.chars.next() {
                if quoted_since.is_some() {
                    match c {
                        '"' if self.chars.peek() == Some(&'"') => {
                            cur.push('"');
                            self.chars.next();
                        }
                        '"' => quoted_since = None,
                        '\n' => {
                            self.line += 1;
                            cur.push(c);
                        }
                        _ => cur.push(c),
                    }
                    continue;
                }
                match c {
                    // A quote opens a field that holds nothing yet, or only
                    // the spaces of `a, "b,c"` (dropped).
                    '"' if !quoted_part && blank => {
                        cur.clear();
                        quoted_since = Some(self.line);
                        quoted_part = true;
                    }
                    ',' if fields.len() + 1 == MAX_CSV_FIELDS => {
                        self.done = true;
                        return Some(Err(CsvError::TooManyFields { line: start }));
                    }
                    ',' => {
                        fields.push(cur.as_str().to_owned());
                        cur.clear();
                        quoted_part = false;
                        blank = true;
                    }
                    // Carriage returns before a line end, or at the end of
                    // the text, are part of it: `\r\r\n` is what Python's
                    // csv module writes on Windows to a file not opened with
                    // newline=''.
                    '\r' if matches!(self.chars.peek(), None | Some('\r' | '\n')) => {}
                    '\r' => {
                        self.done = true;
                        return Some(Err(CsvError::BareCarriageReturn { line: self.line }));
                    }
                    '\n' => {
                        self.line += 1;
                        ended = true;
                        break;
                    }
                    _ => {
                        blank &= c == ' ';
                        cur.push(c);
                    }
                }
            }
            if !ended {
                self.done = true;
                if let Some(line) = quoted_since {
                    return Some(Err(CsvError::UnclosedQuote { line }));
                }
            }
            fields.push(cur.as_str().to_owned());
            // A blank line is no record.
            if fields.len() == 1 && fields[0].trim().is_empty() {
                continue;
            }
            // (A no-op but for the first record, or a wider one.)
            fields.shrink_to_fit();
            self.width = fields.len();
            return Some(Ok(CsvRecord {
                line: start,
                fields,
            }));
        }
        None
    }
}

/// The bytes of a CSV file. A device (`/dev/zero`) would be read until
/// memory runs out and is refused (`InvalidInput`); a pipe is fine (its
/// writer ends it).
pub fn read_csv_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = std::fs::metadata(path)?.file_type();
        if t.is_char_device() || t.is_block_device() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a device, not a CSV file",
            ));
        }
    }
    std::fs::read(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Vec<Vec<String>> {
        parse_csv(text)
            .unwrap()
            .into_iter()
            .map(|r| r.fields)
            .collect()
    }

    #[test]
    fn records_lines_and_quotes() {
        assert_eq!(fields("a,b\nc,d"), [["a", "b"], ["c", "d"]]);
        assert_eq!(fields("a,b\r\nc,d\r\n"), [["a", "b"], ["c", "d"]]);
        assert_eq!(fields("a,,\n"), [["a", "", ""]]);
        assert_eq!(fields("\"\",\n"), [["", ""]]);
        assert!(
            fields("\"\"\n\" \"\n").is_empty(),
            "one blank field is a blank line"
        );
        assert_eq!(fields("\"a\"\"b\",c"), [["a\"b", "c"]]);
        assert_eq!(fields("a,\"x\ny\"z,b"), [["a", "x\nyz", "b"]]);
        // Spaces before a quoted field, as some writers put after commas.
        assert_eq!(fields("id, \"a, b\" ,c"), [["id", "a, b ", "c"]]);
        assert_eq!(fields("\"a\" \"b\""), [["a \"b\""]]);
        // A carriage return alone is data in quotes, an error outside
        // them: it would join two rows of a file of mixed line ends.
        assert_eq!(fields("\"a\rb\",c"), [["a\rb", "c"]]);
        assert_eq!(
            parse_csv("h\nm1,A\rm2,B\n"),
            Err(CsvError::BareCarriageReturn { line: 2 })
        );
        // Carriage returns before a line end, or ending the text, end it.
        assert_eq!(fields("id,p\r\r\na,b\r\r\n"), [["id", "p"], ["a", "b"]]);
        assert_eq!(fields("h,x\na,b\r"), [["h", "x"], ["a", "b"]]);
        assert!(fields("").is_empty());
        assert!(fields("\n \n\r\n").is_empty());
        let r = parse_csv("h\n\n\"a\nb\",c\nd\n").unwrap();
        assert_eq!(
            r.iter().map(|r| r.line).collect::<Vec<_>>(),
            [1, 3, 5],
            "{r:?}"
        );
    }

    proptest::proptest! {
        /// Any text reads as records or an unclosed quote; written back with
        /// every field quoted, the records read the same.
        #[test]
        fn quoting_round_trips(text in "[a-c,\"\r\n ]{0,40}") {
            if let Ok(records) = parse_csv(&text) {
                let lines = text.matches('\n').count() + 1;
                proptest::prop_assert!(records.windows(2).all(|w| w[0].line < w[1].line));
                proptest::prop_assert!(records.iter().all(|r| (1..=lines).contains(&r.line)));
                let quoted: Vec<String> = records
                    .iter()
                    .map(|r| {
                        let f: Vec<String> =
                            r.fields.iter().map(|f| format!("\"{}\"", f.replace('"', "\"\""))).collect();
                        f.join(",")
                    })
                    .collect();
                let again = parse_csv(&quoted.join("\n")).unwrap();
                let fields = |r: &[CsvRecord]| r.iter().map(|r| r.fields.clone()).collect::<Vec<_>>();
                proptest::prop_assert_eq!(fields(&again), fields(&records));
            }
        }
    }

    /// Quotes inside a long unquoted field: linear time (a rescan of the
    /// field at each quote took about 10^10 steps here).
    #[test]
    fn many_quotes_after_many_spaces_parse_in_linear_time() {
        let n = 100_000;
        let text = format!("{}x{}", " ".repeat(n), "\"".repeat(n));
        // On a thread, with a limit far above the linear cost (milliseconds)
        // and far below the quadratic one (minutes): a regression fails.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(parse_csv(&text).map(|r| r[0].fields[0].len()));
        });
        let len = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("parsed in linear time");
        assert_eq!(len.unwrap(), 2 * n + 1);
    }

    /// A row holds its cells at their lengths: a catalog of mostly empty
    /// cells took 30 times its size when every row kept the spare room of
    /// a doubling vector and every cell that of a doubling string.
    #[test]
    fn records_hold_no_spare_room() {
        let row = format!(
            "sku,a long enough value,\"quoted, value\"{}\n",
            ",".repeat(30)
        );
        for r in csv_records(&row.repeat(3)) {
            let r = r.unwrap();
            assert_eq!(r.fields.len(), 33);
            assert_eq!(r.fields.capacity(), 33);
            assert!(r.fields.iter().all(|f| f.capacity() == f.len()), "{r:?}");
        }
    }

    #[test]
    fn unclosed_quote_names_its_line() {
        assert_eq!(
            parse_csv("a,b\nc,\"d\ne,f\n"),
            Err(CsvError::UnclosedQuote { line: 2 })
        );
        // Read one at a time, the records before it come first.
        let mut records = csv_records("a,b\nc,\"d\ne,f\n");
        assert_eq!(records.next().unwrap().unwrap().fields, ["a", "b"]);
        assert_eq!(
            records.next(),
            Some(Err(CsvError::UnclosedQuote { line: 2 }))
        );
        assert_eq!(records.next(), None);
    }

    #[test]
    fn a_record_of_too_many_fields_is_refused() {
        let widest = ",".repeat(MAX_CSV_FIELDS - 1);
        let r = parse_csv(&format!("h\n{widest}\n")).unwrap();
        assert_eq!(r[1].fields.len(), MAX_CSV_FIELDS);
        let text = format!("a,b\nc,d\n{widest},\ne,f\n");
        let err = CsvError::TooManyFields { line: 3 };
        assert_eq!(parse_csv(&text), Err(err.clone()));
        assert!(err.to_string().contains("line 3"), "{err}");
        let mut records = csv_records(&text);
        assert_eq!(records.nth(1).unwrap().unwrap().fields, ["c", "d"]);
        assert_eq!(records.next(), Some(Err(err)));
        assert_eq!(records.next(), None);
    }
}
