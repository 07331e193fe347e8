//! JPEG decoding at one-eighth scale, straight from the entropy-coded data.
//!
//! A phone photo (12 MP) has a shorter side about twelve times the 256
//! pixels the network needs. At 1/8 scale each 8x8 DCT block becomes one
//! pixel, the mean its DC coefficient encodes, so the decoder only has to
//! *read past* the 63 AC coefficients of each block, never compute them: no
//! dequantisation and no inverse DCT. The AC Huffman tables are expanded
//! into lookup tables that give, for the next [`SKIP_BITS`] bits, how many
//! bits the whole AC symbols there take (codes and magnitude bits) and how
//! far they move along the block, so one lookup passes one or more
//! coefficients.
//! Block values are what libjpeg's 1/8-scale decode computes (DC / 8 + 128);
//! subsampled chroma is replicated.
//!
//! It handles what cameras and phones write: sequential Huffman JPEGs
//! (SOF0 / SOF1, 8-bit samples) with one (grey) or three (YCbCr)
//! components in a single scan, integral sampling factors, restart
//! intervals. For anything else (progressive or arithmetic coding, CMYK or
//! RGB components, several scans, a truncated or damaged stream) it returns
//! `None` and the caller uses the general decoder, which also words the
//! error for a broken file.

use image::RgbImage;

/// Bits the Huffman lookup tables look ahead.
const LOOKUP_BITS: u32 = 10;

/// Decodes `bytes` at 1/8 scale (each side divided by 8, rounded up), or
/// `None` if the file is not one this decoder handles, is damaged, or has
/// more than `max_pixels` pixels.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Option<RgbImage> {
    let headers = read_headers(bytes, max_pixels)?;
    let (planes, end) = decode_scan(bytes, &headers)?;
    if next_marker_after_data(bytes, end)? != EOI {
        return None; // another scan, or something we do not handle
    }
    to_rgb(&headers.frame, &planes)
}

const EOI: u8 = 0xD9;

/// One image component as the frame header describes it.
#[derive(Clone, Copy)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    quant: usize,
}

/// The frame header: size and components.
struct Frame {
    width: usize,
    height: usize,
    components: Vec<Component>,
    h_max: usize,
    v_max: usize,
}

/// Everything up to the first scan's entropy-coded data.
struct Headers {
    frame: Frame,
    /// Per frame component: DC table, AC table and DC quantisation step.
    coding: Vec<(Huffman, Huffman, i32)>,
    restart_interval: usize,
    /// Offset of the first entropy-coded byte.
    data_start: usize,
}

/// Tables as the segments define them, by slot (0..4).
#[derive(Default)]
struct Tables {
    dc: [Option<Huffman>; 4],
    ac: [Option<Huffman>; 4],
    dc_step: [Option<u16>; 4],
    restart_interval: u16,
    adobe_rgb: bool,
}

fn read_headers(bytes: &[u8], max_pixels: u64) -> Option<Headers> {
    if bytes.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut pos = 2;
    let mut tables = Tables::default();
    let mut frame = None;
    loop {
        let (marker, after) = marker_at(bytes, pos)?;
        let len = usize::from(u16::from_be_bytes([
            *bytes.get(after)?,
            *bytes.get(after + 1)?,
        ]));
        let segment = bytes.get(after + 2..after + len.checked_sub(2)?.checked_add(2)?)?;
        pos = after + len;
        match marker {
            0xC0 | 0xC1 => frame = Some(parse_frame(segment, max_pixels)?),
            0xC4 => parse_huffman(segment, &mut tables)?,
            0xDB => parse_quantisation(segment, &mut tables)?,
            0xDD => {
                tables.restart_interval = u16::from_be_bytes([*segment.first()?, *segment.get(1)?])
            }
            0xEE => tables.adobe_rgb = is_adobe_rgb(segment),
            0xDA => {
                let frame = frame?;
                let coding = parse_scan(segment, &frame, &tables)?;
                if frame.components.len() == 3 && (tables.adobe_rgb || is_rgb_ids(&frame)) {
                    return None;
                }
                return Some(Headers {
                    frame,
                    coding,
                    restart_interval: usize::from(tables.restart_interval),
                    data_start: pos,
                });
            }
            // Other frame types: progressive, lossless, arithmetic coding.
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return None,
            _ => {} // APPn, COM and the like.
        }
    }
}

/// The marker starting at `pos` (fill bytes allowed): its code and the
/// offset after it.
fn marker_at(bytes: &[u8], mut pos: usize) -> Option<(u8, usize)> {
    if *bytes.get(pos)? != 0xFF {
        return None;
    }
    while *bytes.get(pos)? == 0xFF {
        pos += 1;
    }
    Some((bytes[pos], pos + 1))
}

fn parse_frame(s: &[u8], max_pixels: u64) -> Option<Frame> {
    let (precision, count) = (*s.first()?, usize::from(*s.get(5)?));
    let height = usize::from(u16::from_be_bytes([*s.get(1)?, *s.get(2)?]));
    let width = usize::from(u16::from_be_bytes([*s.get(3)?, *s.get(4)?]));
    let pixels = (width as u64) * (height as u64);
    if precision != 8 || !(count == 1 || count == 3) || pixels == 0 || pixels > max_pixels {
        return None;
    }
    let components = (0..count)
        .map(|i| {
            let c = s.get(6 + 3 * i..9 + 3 * i)?;
            let (h, v) = (usize::from(c[1] >> 4), usize::from(c[1] & 15));
            ((1..=4).contains(&h) && (1..=4).contains(&v) && c[2] < 4).then_some(Component {
                id: c[0],
                h,
                v,
                quant: usize::from(c[2]),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let h_max = components.iter().map(|c| c.h).max()?;
    let v_max = components.iter().map(|c| c.v).max()?;
    if components
        .iter()
        .any(|c| h_max % c.h != 0 || v_max % c.v != 0)
    {
        return None;
    }
    Some(Frame {
        width,
        height,
        components,
        h_max,
        v_max,
    })
}

fn parse_huffman(mut s: &[u8], tables: &mut Tables) -> Option<()> {
    while let Some(&class_slot) = s.first() {
        let counts: [u8; 16] = s.get(1..17)?.try_into().ok()?;
        let total = counts.iter().map(|&c| usize::from(c)).sum::<usize>();
        let values = s.get(17..17 + total)?;
        let slot = usize::from(class_slot & 15);
        match class_slot >> 4 {
            0 => *tables.dc.get_mut(slot)? = Some(Huffman::new_dc(&counts, values)?),
            1 => *tables.ac.get_mut(slot)? = Some(Huffman::new_ac(&counts, values)?),
            _ => return None,
        }
        s = &s[17 + total..];
    }
    Some(())
}

fn parse_quantisation(mut s: &[u8], tables: &mut Tables) -> Option<()> {
    while let Some(&precision_slot) = s.first() {
        let (wide, slot) = (precision_slot >> 4 != 0, usize::from(precision_slot & 15));
        let step = if wide {
            u16::from_be_bytes([*s.get(1)?, *s.get(2)?])
        } else {
            u16::from(*s.get(1)?)
        };
        *tables.dc_step.get_mut(slot)? = Some(step);
        s = s.get(if wide { 129 } else { 65 }..)?;
    }
    Some(())
}

/// An Adobe APP14 segment whose transform flag says the components are
/// stored untransformed (RGB, not YCbCr).
fn is_adobe_rgb(s: &[u8]) -> bool {
    s.starts_with(b"Adobe") && s.get(11) == Some(&0)
}

/// Components named 'R', 'G', 'B': an RGB JPEG, not YCbCr.
fn is_rgb_ids(frame: &Frame) -> bool {
    frame.components.iter().map(|c| c.id).eq(*b"RGB")
}

/// The scan must carry every component, in frame order, with tables defined.
fn parse_scan(s: &[u8], frame: &Frame, tables: &Tables) -> Option<Vec<(Huffman, Huffman, i32)>> {
    if usize::from(*s.first()?) != frame.components.len() {
        return None;
    }
    frame
        .components
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let selector = s.get(1 + 2 * i..3 + 2 * i)?;
            if selector[0] != c.id {
                return None;
            }
            let dc = tables.dc.get(usize::from(selector[1] >> 4))?.clone()?;
            let ac = tables.ac.get(usize::from(selector[1] & 15))?.clone()?;
            let step = i32::from(tables.dc_step[c.quant]?);
            Some((dc, ac, step))
        })
        .collect()
}

/// One component's block values (one byte per 8x8 block, MCU padding
/// included), `width` blocks per row.
struct Plane {
    values: Vec<u8>,
    width: usize,
}

/// Reads the scan; returns each component's plane and the offset where the
/// entropy-coded data stopped being read.
fn decode_scan(bytes: &[u8], headers: &Headers) -> Option<(Vec<Plane>, usize)> {
    let frame = &headers.frame;
    let single = frame.components.len() == 1;
    // A single-component scan is not interleaved: one block per MCU.
    let (mcus_x, mcus_y) = if single {
        (frame.width.div_ceil(8), frame.height.div_ceil(8))
    } else {
        (
            frame.width.div_ceil(8 * frame.h_max),
            frame.height.div_ceil(8 * frame.v_max),
        )
    };
    let layout: Vec<(usize, usize)> = frame
        .components
        .iter()
        .map(|c| if single { (1, 1) } else { (c.h, c.v) })
        .collect();
    let mut planes: Vec<Plane> = layout
        .iter()
        .map(|&(h, v)| Plane {
            values: vec![0; mcus_x * h * mcus_y * v],
            width: mcus_x * h,
        })
        .collect();
    let mut bits = BitReader::new(bytes, headers.data_start);
    let mut predictions = vec![0i32; layout.len()];
    let interval = headers.restart_interval;
    for my in 0..mcus_y {
        for mx in 0..mcus_x {
            let mcu = my * mcus_x + mx;
            if interval > 0 && mcu > 0 && mcu % interval == 0 {
                bits.restart()?;
                predictions.iter_mut().for_each(|p| *p = 0);
            }
            for (c, &(h, v)) in layout.iter().enumerate() {
                let (dc, ac, step) = &headers.coding[c];
                let plane = &mut planes[c];
                for by in 0..v {
                    for bx in 0..h {
                        let value = decode_block(&mut bits, dc, ac, *step, &mut predictions[c])?;
                        plane.values[(my * v + by) * plane.width + mx * h + bx] = value;
                    }
                }
            }
        }
        if bits.overran() {
            return None; // the data ended (or hit a marker) mid-scan
        }
    }
    Some((planes, bits.pos))
}

/// Reads one block: its DC difference, then past its AC coefficients.
/// Returns the block's value at 1/8 scale. The bit reader is copied into
/// locals for the block so its state stays in registers.
#[inline(always)]
fn decode_block(
    reader: &mut BitReader<'_>,
    dc: &Huffman,
    ac: &Huffman,
    step: i32,
    prediction: &mut i32,
) -> Option<u8> {
    let mut bits = *reader;
    bits.ensure();
    *prediction = prediction.wrapping_add(dc.decode_dc(&mut bits)?);
    let mut k = 1;
    while k < 64 {
        bits.ensure();
        let skip = Skip::unpack(ac.skip[bits.peek(SKIP_BITS) as usize]);
        if skip.bits != 0 && k <= skip.limit {
            bits.consume(skip.bits);
            k += skip.advance;
            continue;
        }
        let symbol = ac.decode(&mut bits)?;
        let (run, size) = (usize::from(symbol >> 4), u32::from(symbol & 15));
        match (run, size) {
            (15, 0) => k += 16,
            (_, 0) => break, // end of block
            _ => {
                bits.consume(size);
                k += run + 1;
            }
        }
    }
    *reader = bits;
    // libjpeg's 1x1 inverse DCT: dequantise, divide by 8 rounding, + 128.
    let mean = (prediction.wrapping_mul(step).wrapping_add(4) >> 3).wrapping_add(128);
    Some(mean.clamp(0, 255) as u8)
}

/// Bits the AC skip tables look ahead.
const SKIP_BITS: u32 = 11;

/// What the next [`SKIP_BITS`] bits of AC data hold, decoded ahead: one or
/// more whole symbols (codes with their magnitude bits). Packed into a
/// `u32`; 0 where the first symbol does not fit.
#[derive(Debug, PartialEq)]
struct Skip {
    /// Bits the symbols take.
    bits: u32,
    /// How far they move along the block; 64 or more once a symbol ends it.
    advance: usize,
    /// Valid only from a position `k <= limit`: the symbols must all lie
    /// inside the block, as the bits after a block's 63rd coefficient are
    /// the next block's. 63 (always valid) for a single symbol.
    limit: usize,
}

impl Skip {
    fn pack(&self) -> u32 {
        self.bits | ((self.advance as u32) << 4) | ((self.limit as u32) << 16)
    }

    #[inline(always)]
    fn unpack(v: u32) -> Skip {
        Skip {
            bits: v & 15,
            advance: ((v >> 4) & 0xFFF) as usize,
            limit: (v >> 16) as usize,
        }
    }
}

/// A Huffman table expanded for fast decoding.
#[derive(Clone)]
struct Huffman {
    /// By the next [`LOOKUP_BITS`] bits: `length << 8 | symbol`, 0 where the
    /// code is longer.
    lookup: Vec<u16>,
    /// By the next [`SKIP_BITS`] bits: a packed [`Skip`], for AC tables.
    skip: Vec<u32>,
    /// By the next [`LOOKUP_BITS`] bits, for DC tables: `total << 8 |
    /// length << 4 | size` where the code (`length` bits) and its `size`
    /// magnitude bits both fit (`total` bits), else 0.
    dc_ahead: Vec<u16>,
    /// Canonical decoding of longer codes (libjpeg's `maxcode`/`valoffset`).
    max_code: [i32; 17],
    value_offset: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8; 16], values: &[u8]) -> Option<Huffman> {
        let mut table = Huffman {
            lookup: vec![0; 1 << LOOKUP_BITS],
            skip: Vec::new(),
            dc_ahead: Vec::new(),
            max_code: [-1; 17],
            value_offset: [0; 17],
            values: values.to_vec(),
        };
        let (mut code, mut k) = (0u32, 0usize);
        for len in 1..=16u32 {
            let count = usize::from(counts[len as usize - 1]);
            table.value_offset[len as usize] = k as i32 - code as i32;
            for _ in 0..count {
                if code >= 1 << len {
                    return None; // more codes than the length allows
                }
                if len <= LOOKUP_BITS {
                    let spare = LOOKUP_BITS - len;
                    let entry = ((len as u16) << 8) | u16::from(values[k]);
                    let first = (code << spare) as usize;
                    table.lookup[first..first + (1 << spare)].fill(entry);
                }
                code += 1;
                k += 1;
            }
            if count > 0 {
                table.max_code[len as usize] = code as i32 - 1;
            }
            code <<= 1;
        }
        Some(table)
    }

    /// A DC table: also builds the lookup of code plus magnitude bits.
    fn new_dc(counts: &[u8; 16], values: &[u8]) -> Option<Huffman> {
        let mut table = Huffman::new(counts, values)?;
        table.dc_ahead = table
            .lookup
            .iter()
            .map(|&entry| {
                let (len, size) = (entry >> 8, entry & 0xFF);
                let total = len + size;
                if entry == 0 || size > 15 || total > LOOKUP_BITS as u16 {
                    0
                } else {
                    (total << 8) | (len << 4) | size
                }
            })
            .collect();
        Some(table)
    }

    /// Reads a DC difference: code and magnitude bits (the caller has
    /// ensured 32 bits are buffered).
    #[inline(always)]
    fn decode_dc(&self, bits: &mut BitReader<'_>) -> Option<i32> {
        let entry = self.dc_ahead[bits.peek(LOOKUP_BITS) as usize];
        if entry != 0 {
            let (len, size) = (u32::from((entry >> 4) & 15), u32::from(entry & 15));
            let magnitude = if size == 0 {
                0
            } else {
                ((bits.buf << len) >> (64 - size)) as i32
            };
            bits.consume(u32::from(entry >> 8));
            return Some(extend(magnitude, size));
        }
        let size = self.decode(bits)?;
        if size > 15 {
            return None;
        }
        Some(bits.receive_extend(u32::from(size)))
    }

    /// An AC table: also builds the skip lookup.
    fn new_ac(counts: &[u8; 16], values: &[u8]) -> Option<Huffman> {
        let mut table = Huffman::new(counts, values)?;
        table.skip = (0..1u32 << SKIP_BITS)
            .map(|bits| table.skip_for(bits).map_or(0, |s| s.pack()))
            .collect();
        Some(table)
    }

    /// The code at the top of the `avail` low bits of `bits`: its length
    /// and symbol.
    fn symbol_at(&self, bits: u32, avail: u32) -> Option<(u32, u8)> {
        (1..=avail.min(16)).find_map(|len| {
            let code = (bits >> (avail - len)) as i32 & ((1 << len) - 1);
            if code > self.max_code[len as usize] {
                return None;
            }
            let index = usize::try_from(self.value_offset[len as usize] + code).ok()?;
            Some((len, *self.values.get(index)?))
        })
    }

    /// Decodes as many whole AC symbols as fit in [`SKIP_BITS`] bits.
    fn skip_for(&self, bits: u32) -> Option<Skip> {
        let (mut used, mut advance, mut symbols) = (0u32, 0usize, 0);
        let mut ended = false;
        while advance < 63 && used < SKIP_BITS && !ended {
            let avail = SKIP_BITS - used;
            let Some((len, symbol)) = self.symbol_at(bits & ((1 << avail) - 1), avail) else {
                break;
            };
            let (run, size) = (usize::from(symbol >> 4), u32::from(symbol & 15));
            if len + size > avail {
                break;
            }
            used += len + size;
            symbols += 1;
            match (run, size) {
                (15, 0) => advance += 16,
                (_, 0) => ended = true,
                _ => advance += run + 1,
            }
        }
        // From position k the symbols are all inside the block if k plus
        // their advance (an end of block adds none) is at most 63.
        let limit = if symbols > 1 {
            63usize.checked_sub(advance)?
        } else {
            63
        };
        (symbols > 0).then_some(Skip {
            bits: used,
            advance: if ended { 64 } else { advance },
            limit,
        })
    }

    /// Reads one symbol (the caller has ensured 32 bits are buffered).
    #[inline(always)]
    fn decode(&self, bits: &mut BitReader<'_>) -> Option<u8> {
        let entry = self.lookup[bits.peek(LOOKUP_BITS) as usize];
        if entry != 0 {
            bits.consume(u32::from(entry >> 8));
            return Some(entry as u8);
        }
        self.decode_long(bits)
    }

    #[cold]
    fn decode_long(&self, bits: &mut BitReader<'_>) -> Option<u8> {
        let (len, symbol) = self.symbol_at(bits.peek(16), 16)?;
        bits.consume(len);
        Some(symbol)
    }
}

/// Bits of the entropy-coded data, most significant first, with JPEG's
/// byte stuffing (FF 00 stands for FF) undone. At a marker or the end of
/// the data it supplies zero bits and counts them, so running past the
/// real data is detected rather than read.
#[derive(Clone, Copy)]
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    /// Buffered bits, left-aligned.
    buf: u64,
    count: u32,
    /// How many of the last buffered bits are made-up zeros.
    padding: u32,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        BitReader {
            data,
            pos,
            buf: 0,
            count: 0,
            padding: 0,
        }
    }

    /// Makes sure at least 32 bits are buffered: enough for any Huffman
    /// code (16) plus its magnitude bits (15).
    #[inline(always)]
    fn ensure(&mut self) {
        if self.count < 32 {
            self.refill();
        }
    }

    fn refill(&mut self) {
        if self.padding == 0 {
            if let Some(chunk) = self.data.get(self.pos..self.pos + 8) {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                let word = u64::from_be_bytes(word);
                if !has_ff_byte(word) {
                    let n = (64 - self.count) / 8;
                    let fresh = if n == 8 { word } else { word >> (64 - 8 * n) };
                    self.buf |= fresh << (64 - self.count - 8 * n);
                    self.count += 8 * n;
                    self.pos += n as usize;
                    return;
                }
            }
        }
        while self.count <= 56 {
            let byte = self.next_byte();
            self.buf |= u64::from(byte) << (56 - self.count);
            self.count += 8;
        }
    }

    fn next_byte(&mut self) -> u8 {
        if self.padding == 0 {
            match self.data.get(self.pos) {
                Some(0xFF) if self.data.get(self.pos + 1) == Some(&0) => {
                    self.pos += 2;
                    return 0xFF;
                }
                Some(0xFF) | None => {} // a marker, or the end: stop here
                Some(&b) => {
                    self.pos += 1;
                    return b;
                }
            }
        }
        self.padding += 8;
        0
    }

    #[inline(always)]
    fn peek(&self, n: u32) -> u32 {
        (self.buf >> (64 - n)) as u32
    }

    #[inline(always)]
    fn consume(&mut self, n: u32) {
        self.buf <<= n;
        self.count -= n;
    }

    /// Reads `size` magnitude bits as a signed value (JPEG's EXTEND).
    #[inline(always)]
    fn receive_extend(&mut self, size: u32) -> i32 {
        if size == 0 {
            return 0;
        }
        let v = self.peek(size) as i32;
        self.consume(size);
        extend(v, size)
    }

    /// True once made-up bits have been consumed.
    fn overran(&self) -> bool {
        self.count < self.padding
    }

    /// At a restart interval's end: drops the partial byte and passes the
    /// RSTn marker.
    fn restart(&mut self) -> Option<()> {
        if self.overran() {
            return None;
        }
        let (marker, after) = marker_at(self.data, skip_to_marker(self.data, self.pos)?)?;
        if !(0xD0..=0xD7).contains(&marker) {
            return None;
        }
        *self = BitReader::new(self.data, after);
        Some(())
    }
}

/// JPEG's EXTEND: `size` magnitude bits `v` as a signed value.
#[inline(always)]
fn extend(v: i32, size: u32) -> i32 {
    if size > 0 && v < 1 << (size - 1) {
        v - (1 << size) + 1
    } else {
        v
    }
}

/// True if any byte of `w` is 0xFF.
#[inline(always)]
fn has_ff_byte(w: u64) -> bool {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let inverted = !w; // an FF byte is a zero byte here
    inverted.wrapping_sub(LOW) & !inverted & HIGH != 0
}

/// Offset of the next marker at or after `pos` in entropy-coded data
/// (skipping stuffed FF 00 and stray bytes).
fn skip_to_marker(bytes: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        // FF 00 is a stuffed data byte; FF FF.. are fill bytes before a marker.
        if *bytes.get(pos)? == 0xFF && *bytes.get(pos + 1)? != 0x00 {
            return Some(pos);
        }
        pos += 1;
    }
}

/// The code of the first marker after entropy-coded data ending near `pos`.
fn next_marker_after_data(bytes: &[u8], pos: usize) -> Option<u8> {
    Some(marker_at(bytes, skip_to_marker(bytes, pos)?)?.0)
}

/// Assembles the planes into an RGB image of the frame at 1/8 scale.
fn to_rgb(frame: &Frame, planes: &[Plane]) -> Option<RgbImage> {
    let (w, h) = (frame.width.div_ceil(8), frame.height.div_ceil(8));
    let mut rgb = Vec::with_capacity(w * h * 3);
    if let [grey] = planes {
        for row in grey.values.chunks_exact(grey.width).take(h) {
            rgb.extend(row[..w].iter().flat_map(|&v| [v, v, v]));
        }
    } else {
        // Which plane column each output column reads, per component.
        let columns: Vec<Vec<usize>> = frame
            .components
            .iter()
            .map(|c| (0..w).map(|x| x * c.h / frame.h_max).collect())
            .collect();
        for y in 0..h {
            let row = |c: usize| {
                let r = y * frame.components[c].v / frame.v_max;
                &planes[c].values[r * planes[c].width..(r + 1) * planes[c].width]
            };
            let (luma, cb, cr) = (row(0), row(1), row(2));
            for x in 0..w {
                rgb.extend_from_slice(&ycbcr_to_rgb(
                    i32::from(luma[columns[0][x]]),
                    i32::from(cb[columns[1][x]]),
                    i32::from(cr[columns[2][x]]),
                ));
            }
        }
    }
    RgbImage::from_raw(u32::try_from(w).ok()?, u32::try_from(h).ok()?, rgb)
}

/// JFIF's YCbCr to RGB, in 16-bit fixed point.
fn ycbcr_to_rgb(y: i32, cb: i32, cr: i32) -> [u8; 3] {
    let (cb, cr) = (cb - 128, cr - 128);
    let y = y << 16;
    let half = 1 << 15;
    let r = (y + 91_881 * cr + half) >> 16;
    let g = (y - 22_554 * cb - 46_802 * cr + half) >> 16;
    let b = (y + 116_130 * cb + half) >> 16;
    [r, g, b].map(|v| v.clamp(0, 255) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/{path}", env!("CARGO_MANIFEST_DIR"))).expect("test file")
    }

    /// jpeg-decoder's own 1/8-scale decode, as RGB.
    fn reference(bytes: &[u8]) -> RgbImage {
        let mut decoder = jpeg_decoder::Decoder::new(bytes);
        decoder.read_info().expect("info");
        let info = decoder.info().expect("info");
        let (w, h) = (info.width.div_ceil(8), info.height.div_ceil(8));
        decoder.scale(w, h).expect("scale");
        let pixels = decoder.decode().expect("decode");
        let info = decoder.info().expect("info");
        let rgb = match info.pixel_format {
            jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|&v| [v, v, v]).collect(),
            _ => pixels,
        };
        RgbImage::from_raw(u32::from(info.width), u32::from(info.height), rgb).expect("image")
    }

    #[test]
    fn matches_a_general_decoder_at_one_eighth_scale() {
        // (file, chroma subsampled)
        for (path, subsampled) in [
            ("data/animal-panda.jpg", true),
            ("data/skimage-rocket.jpg", false),
            ("jpeg-layouts/restart-every-5-mcus.jpg", true),
            ("jpeg-layouts/rocket-444-restart-every-row.jpg", false),
            ("jpeg-layouts/grey.jpg", false),
        ] {
            let bytes = file(path);
            let ours = decode(&bytes, u64::MAX).unwrap_or_else(|| panic!("{path}: not decoded"));
            let want = reference(&bytes);
            assert_eq!(ours.dimensions(), want.dimensions(), "{path}");
            let diffs: Vec<u32> = ours
                .as_raw()
                .iter()
                .zip(want.as_raw())
                .map(|(&a, &b)| u32::from(a.abs_diff(b)))
                .collect();
            let mean = diffs.iter().sum::<u32>() as f64 / diffs.len() as f64;
            let max = diffs.iter().copied().max().unwrap_or(0);
            // Rounding differs by one level here and there. With 4:2:0
            // chroma jpeg-decoder interpolates where libjpeg at this scale
            // (and we) replicate, which moves colour edges by a pixel.
            assert!(mean < 2.0, "{path}: mean |diff| {mean}");
            assert!(subsampled || max <= 3, "{path}: max |diff| {max}");
        }
    }

    #[test]
    fn restart_markers_do_not_change_the_picture() {
        let plain = decode(&file("data/animal-panda.jpg"), u64::MAX).expect("plain");
        let restarts =
            decode(&file("jpeg-layouts/restart-every-5-mcus.jpg"), u64::MAX).expect("rst");
        assert_eq!(plain, restarts);
    }

    #[test]
    fn other_layouts_and_broken_files_go_to_the_general_decoder() {
        assert!(decode(&file("jpeg-layouts/progressive.jpg"), u64::MAX).is_none());
        let bytes = file("data/animal-panda.jpg");
        assert!(
            decode(&bytes[..bytes.len() / 2], u64::MAX).is_none(),
            "cut in half"
        );
        assert!(
            decode(&bytes[..bytes.len() - 2], u64::MAX).is_none(),
            "no end marker"
        );
        assert!(
            decode(&file("data/chelsea.png"), u64::MAX).is_none(),
            "a PNG"
        );
        assert!(decode(&bytes, 640 * 400).is_none(), "over the pixel limit");
        assert!(decode(&bytes, 640 * 427).is_some(), "at the pixel limit");
    }

    #[test]
    fn damaged_files_never_panic() {
        let originals = [
            file("jpeg-layouts/restart-every-5-mcus.jpg"),
            file("jpeg-layouts/grey.jpg"),
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut decoded = 0;
        for round in 0..600 {
            let mut bytes = originals[round % 2].clone();
            // Headers are the first few hundred bytes: hit them often.
            for _ in 0..1 + next(4) {
                let at = if next(2) == 0 {
                    next(700)
                } else {
                    next(bytes.len())
                };
                bytes[at] = next(256) as u8;
            }
            if next(4) == 0 {
                bytes.truncate(next(bytes.len()));
            }
            decoded += usize::from(decode(&bytes, 1 << 24).is_some());
        }
        // Flipped entropy bytes mostly still decode (to a damaged picture).
        assert!(decoded > 0);
    }
}
