//! Contact sheets: a title line, then one row of image tiles, each with a
//! coloured similarity bar and up to three lines of text under it.
//!
//! Text is drawn with a built-in 5 × 7 pixel font (upper case, digits and
//! common punctuation; lower case is drawn as upper case), so the binary
//! needs no font file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use image::{imageops, ImageFormat, Rgb, RgbImage};

pub const TILE_W: u32 = 96;
pub const TILE_H: u32 = 128;
const GAP: u32 = 8;
const BAR_H: u32 = 6;
const LINE_H: u32 = 9;
const LABEL_LINES: u32 = 3;
const TITLE_H: u32 = 14;

pub const BLUE: Rgb<u8> = Rgb([40, 90, 220]);
pub const GREEN: Rgb<u8> = Rgb([40, 170, 70]);
pub const ORANGE: Rgb<u8> = Rgb([240, 140, 30]);
const INK: Rgb<u8> = Rgb([30, 30, 30]);

/// Writes `img` to `path` in the format its extension names: encoded in
/// memory first, then written and synced to a temporary file beside it and renamed,
/// so that a format this build cannot write, or a full disk, leaves a file
/// already at `path` as it was. A link at `path` is written through (the
/// file it names is replaced, the link kept), and a file replaced keeps
/// its permissions.
pub fn save(img: &RgbImage, path: &Path) -> anyhow::Result<()> {
    let write = || -> anyhow::Result<()> {
        let format = ImageFormat::from_path(path)?;
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, format)?;
        let target = match std::fs::symlink_metadata(path) {
            // (A link whose file is not there yet names it all the same.)
            Ok(m) if m.file_type().is_symlink() => {
                std::fs::canonicalize(path).or_else(|_| last_link_target(path))?
            }
            _ => path.to_path_buf(),
        };
        // (With the replaced file's permissions.)
        let (tmp, mut file) = vitrine_index::create_temp_beside(&target)?;
        let written = std::io::Write::write_all(&mut file, &bytes.into_inner())
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &target));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        // In place: a folder that cannot be synced makes it no less written.
        if let Err(e) = crate::info::sync_parent(&target) {
            tracing::warn!(path = %target.display(), error = %e, "cannot sync the sheet's folder");
        }
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// The file a chain of links ends at, though it does not exist yet (each
/// relative link read from its own folder; at most 40 links).
pub(crate) fn last_link_target(path: &Path) -> std::io::Result<PathBuf> {
    let mut at = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                let named = std::fs::read_link(&at)?;
                at = at.parent().unwrap_or(Path::new(".")).join(named);
            }
            _ => return Ok(at),
        }
    }
    Err(std::io::Error::other(format!(
        "{}: too many links",
        path.display()
    )))
}

/// One tile: an image file, its bar colour and fill (0..=1), and its labels.
pub struct Tile {
    pub path: PathBuf,
    pub colour: Rgb<u8>,
    pub fill: f32,
    pub labels: Vec<String>,
}

/// The most characters of a title shown (960 pixels).
const MAX_TITLE_CHARS: usize = 160;

/// `text` cut to `max` characters, the last three `...` when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(3)).collect();
    out.push_str("...");
    out
}

/// `text` cut to `max` characters by its middle, `...` in place of it:
/// ids that differ at their end (`SS24-DRESS-00012-BLK`, `-WHT`) stay
/// apart on a tile.
fn clip_middle(text: &str, max: usize) -> String {
    let n = text.chars().count();
    if n <= max {
        return text.to_string();
    }
    let keep = max.saturating_sub(3);
    let head = keep / 2;
    let tail = keep - head;
    let mut out: String = text.chars().take(head).collect();
    out.push_str("...");
    out.extend(text.chars().skip(n - tail));
    out
}

/// An image as the model sees it: upright by its EXIF orientation,
/// transparency on white, under the default decode limits.
fn load(path: &std::path::Path) -> anyhow::Result<RgbImage> {
    let limits = vitrine::DecodeLimits::default();
    let decoded = vitrine::decode_image(&limits.read_file(path)?, limits)?;
    RgbImage::from_raw(decoded.width, decoded.height, decoded.pixels)
        .ok_or_else(|| anyhow::anyhow!("decoded pixels do not fill the image"))
}

/// The most tiles drawn in a row (5,200 pixels): `find … limit 10000`
/// would otherwise make a sheet a million pixels wide.
pub(crate) const MAX_TILES: usize = 50;
/// The most rows [`render_rows`] draws (an expansion of thousands of
/// outfits is one row each).
const MAX_ROWS: usize = 100;

/// Tiles in one row (a wider gap after the first, the query or template),
/// each image resized to 96 × 128; the first [`MAX_TILES`], the title
/// saying so.
pub fn render(title: &str, tiles: &[Tile]) -> anyhow::Result<RgbImage> {
    let note = if tiles.len() > MAX_TILES {
        format!(" (first {MAX_TILES} of {})", tiles.len())
    } else {
        String::new()
    };
    let tiles = &tiles[..tiles.len().min(MAX_TILES)];
    let n = tiles.len() as u32;
    // A long title (a query of thousands of brands) is clipped, not
    // allowed to make the sheet as wide.
    let title = clip(title, MAX_TITLE_CHARS - note.len()) + &note;
    let title = title.as_str();
    let width = (GAP + n * (TILE_W + GAP) + GAP).max(GAP * 2 + text_width(title));
    let top = GAP + TITLE_H;
    let height = top + TILE_H + 2 + BAR_H + 2 + LABEL_LINES * LINE_H + GAP;
    let mut sheet = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    draw_text(&mut sheet, GAP, GAP, title, INK);
    let mut x = GAP;
    for (i, t) in tiles.iter().enumerate() {
        // One unreadable image greys out its tile, not the whole sheet.
        let tile = match load(&t.path) {
            Ok(img) => imageops::resize(&img, TILE_W, TILE_H, imageops::FilterType::Triangle),
            Err(e) => {
                tracing::warn!(path = %t.path.display(), error = %e, "image unreadable; grey tile drawn");
                RgbImage::from_pixel(TILE_W, TILE_H, Rgb([200, 200, 200]))
            }
        };
        imageops::replace(&mut sheet, &tile, i64::from(x), i64::from(top));
        let bar_y = top + TILE_H + 2;
        let filled = ((TILE_W as f32) * t.fill.clamp(0.0, 1.0)).round() as u32;
        for dy in 0..BAR_H {
            for dx in 0..TILE_W {
                let c = if dx < filled.max(4) {
                    t.colour
                } else {
                    Rgb([225, 225, 225])
                };
                sheet.put_pixel(x + dx, bar_y + dy, c);
            }
        }
        let max_chars = (TILE_W / 6) as usize;
        for (l, label) in t.labels.iter().take(LABEL_LINES as usize).enumerate() {
            let clipped = clip_middle(label, max_chars);
            draw_text(
                &mut sheet,
                x,
                bar_y + BAR_H + 3 + l as u32 * LINE_H,
                &clipped,
                INK,
            );
        }
        x += TILE_W + GAP + if i == 0 { GAP } else { 0 };
    }
    Ok(sheet)
}

/// Several rows (each a title and its tiles, as [`render`] draws them)
/// stacked into one sheet: e.g. an outfit template, then its expansions.
/// The first [`MAX_ROWS`], then a line saying how many more were not drawn.
pub fn render_rows(rows: &[(String, Vec<Tile>)]) -> anyhow::Result<RgbImage> {
    let mut rendered = rows
        .iter()
        .take(MAX_ROWS)
        .map(|(title, tiles)| render(title, tiles))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if rows.len() > MAX_ROWS {
        let more = format!("... {} more rows not drawn", rows.len() - MAX_ROWS);
        let mut line = RgbImage::from_pixel(
            GAP * 2 + text_width(&more),
            TITLE_H + GAP,
            Rgb([255, 255, 255]),
        );
        draw_text(&mut line, GAP, GAP / 2, &more, INK);
        rendered.push(line);
    }
    let width = rendered.iter().map(|r| r.width()).max().unwrap_or(1);
    let height = rendered.iter().map(|r| r.height()).sum::<u32>().max(1);
    let mut sheet = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let mut y = 0;
    for r in &rendered {
        imageops::replace(&mut sheet, r, 0, i64::from(y));
        y += r.height();
    }
    Ok(sheet)
}

fn text_width(s: &str) -> u32 {
    s.chars().count() as u32 * 6
}

/// Draws `s` with its top-left corner at (x, y), clipped to the image.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, s: &str, colour: Rgb<u8>) {
    for (i, ch) in s.chars().enumerate() {
        let rows = glyph(ch);
        let gx = x + i as u32 * 6;
        for (dy, bits) in rows.iter().enumerate() {
            for dx in 0..5u32 {
                if bits & (0x10 >> dx) != 0 {
                    let (px, py) = (gx + dx, y + dy as u32);
                    if px < img.width() && py < img.height() {
                        img.put_pixel(px, py, colour);
                    }
                }
            }
        }
    }
}

/// 5 × 7 glyphs, one byte per row, the top bit (0x10) leftmost.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        '&' => [0x0C, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0D],
        '\'' => [0x04, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00],
        '"' => [0x0A, 0x0A, 0x00, 0x00, 0x00, 0x00, 0x00],
        '<' => [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        '^' => [0x04, 0x0A, 0x11, 0x00, 0x00, 0x00, 0x00],
        '*' => [0x00, 0x04, 0x15, 0x0E, 0x15, 0x04, 0x00],
        '!' => [0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04],
        ' ' => [0; 7],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04], // '?'
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_drawn_and_clipped() {
        let mut img = RgbImage::from_pixel(40, 10, Rgb([255, 255, 255]));
        draw_text(&mut img, 1, 1, "Ab1 xyz too long", INK);
        let inked = img.pixels().filter(|p| **p == INK).count();
        assert!(inked > 30, "{inked}");
        // Nothing drawn outside the image, no panic.
        draw_text(&mut img, 38, 8, "W", INK);
    }

    /// A title of 40k characters (a query naming 2,000 brands) does not
    /// make a sheet 240,000 pixels wide.
    #[test]
    fn a_long_title_is_clipped() {
        let title = "find +colour.red where brand in (x) ".repeat(1_100);
        let sheet = render(&title, &[]).unwrap();
        assert_eq!(
            sheet.width(),
            GAP * 2 + text_width(&"x".repeat(MAX_TITLE_CHARS))
        );
        assert_eq!(clip("short", 10), "short");
        // A long title keeps the note of tiles not drawn.
        let tiles: Vec<Tile> = (0..MAX_TILES + 7)
            .map(|i| Tile {
                path: PathBuf::from(format!("/nonexistent/{i}.jpg")),
                colour: BLUE,
                fill: 0.5,
                labels: vec![],
            })
            .collect();
        let sheet = render(&title, &tiles).unwrap();
        assert_eq!(sheet.width(), GAP + MAX_TILES as u32 * (TILE_W + GAP) + GAP);
        let rows: Vec<(String, Vec<Tile>)> = (0..MAX_ROWS + 3)
            .map(|i| (format!("row {i}"), vec![]))
            .collect();
        let one = render("row 0", &[]).unwrap().height();
        let sheet = render_rows(&rows).unwrap();
        assert_eq!(sheet.height(), MAX_ROWS as u32 * one + TITLE_H + GAP);
        assert_eq!(clip("abcdefghijk", 10), "abcdefg...");
    }

    /// Ids that differ at their end stay apart on a tile.
    #[test]
    fn tile_labels_keep_both_ends() {
        let (a, b) = (
            clip_middle("SS24-DRESS-00012-BLK", 16),
            clip_middle("SS24-DRESS-00012-WHT", 16),
        );
        assert_ne!(a, b);
        assert_eq!(a, "SS24-D...012-BLK");
        assert_eq!(clip_middle("short", 16), "short");
    }
}

#[cfg(test)]
mod save_tests {
    /// A format this build cannot write leaves a file already there as it
    /// was (it used to be emptied before the encoder was looked for).
    #[test]
    fn a_failed_save_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let img = image::RgbImage::new(4, 4);
        let kept = dir.path().join("x.ppm");
        std::fs::write(&kept, "keep").unwrap();
        assert!(super::save(&img, &kept).is_err());
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "keep");
        let png = dir.path().join("x.png");
        super::save(&img, &png).unwrap();
        assert!(image::open(&png).is_ok());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    /// A link is written through: the link stays, the file it names is
    /// the new sheet, with its permissions kept.
    #[cfg(unix)]
    #[test]
    fn a_link_is_written_through() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let today = dir.path().join("today.png");
        std::fs::write(&today, "old").unwrap();
        std::fs::set_permissions(&today, std::fs::Permissions::from_mode(0o640)).unwrap();
        let latest = dir.path().join("latest.png");
        std::os::unix::fs::symlink(&today, &latest).unwrap();
        super::save(&image::RgbImage::new(4, 4), &latest).unwrap();
        assert!(std::fs::symlink_metadata(&latest)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(image::open(&today).is_ok());
        let mode = std::fs::metadata(&today).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        // A chain of links to a file not made yet (each relative to its
        // link's folder).
        let first = dir.path().join("first.png");
        std::fs::create_dir(dir.path().join("dated")).unwrap();
        std::os::unix::fs::symlink("current.png", &first).unwrap();
        std::os::unix::fs::symlink("dated/tomorrow.png", dir.path().join("current.png")).unwrap();
        super::save(&image::RgbImage::new(4, 4), &first).unwrap();
        assert!(image::open(dir.path().join("dated/tomorrow.png")).is_ok());
        for link in ["first.png", "current.png"] {
            let m = std::fs::symlink_metadata(dir.path().join(link)).unwrap();
            assert!(m.file_type().is_symlink(), "{link}");
        }
    }
}
