//! Hostile bytes on a worker link: the pipe frame decoder, then the header and item
//! decoders on every frame it accepts. None may panic, and no frame may exceed the cap.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use procpool_core::Received;
use procpool_core::__private::protocol::{FromWorker, Items, ToWorker, decode_header};
use procpool_transport_pipe::frame::read_frame;

const CAP: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let mut wire = Cursor::new(data);
    let mut frame = Vec::new();
    while let Ok(Received::Frame) = read_frame(&mut wire, &mut frame, CAP) {
        assert!(frame.len() <= CAP && frame.capacity() <= CAP);
        if let Ok((_, rest)) = decode_header::<FromWorker<'_>>(&frame) {
            let mut items = Items::new(rest);
            while let Ok(Some(item)) = items.next_item() {
                assert!(item.len() <= rest.len());
            }
        }
        let _ = decode_header::<ToWorker<'_>>(&frame);
    }
});
