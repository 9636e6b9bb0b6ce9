//! A "worker" that does not speak the protocol gets an `Error::Protocol`, not a hang;
//! a pool whose workers cannot be replaced fails calls instead of waiting.

use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};

use procpool::{Error, Pool};
use procpool_core::{Link, LinkConfig, Transport};

/// Impostors write the pipe transport's framing.
#[cfg(feature = "pipe")]
mod impostor {
    use std::io::BufReader;
    use std::process::{Child, ChildStdout, Command, Stdio};
    use std::time::Instant;

    use procpool::{Error, Pool};
    use procpool_core::{FrameReceiver, FrameSender, Link, LinkConfig, Received, Transport};

    /// Starts `sh -c SCRIPT` instead of a worker; its stdout is the link back, in the
    /// pipe transport's framing.
    #[derive(Debug)]
    struct Impostor(&'static str);

    struct Discard;

    impl FrameSender for Discard {
        fn send(&mut self, _: &[&[u8]]) -> Result<(), Error> {
            Ok(())
        }
    }

    struct Stdout(BufReader<ChildStdout>, usize);

    impl FrameReceiver for Stdout {
        fn recv(&mut self, buf: &mut Vec<u8>, _: Option<Instant>) -> Result<Received, Error> {
            procpool::pipe::frame::read_frame(&mut self.0, buf, self.1)
        }
    }

    impl Transport for Impostor {
        fn name(&self) -> &'static str {
            "impostor"
        }

        fn spawn(&self, _: Command, config: LinkConfig) -> Result<(Child, Link), Error> {
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(self.0)
                .stdout(Stdio::piped())
                .spawn()?;
            let out = child.stdout.take().expect("piped");
            let link = Link {
                sender: Box::new(Discard),
                receiver: Box::new(Stdout(BufReader::new(out), config.max_frame)),
            };
            Ok((child, link))
        }

        fn connect(&self, _: LinkConfig) -> Result<Link, Error> {
            Err(Error::Startup("an impostor has no worker side".into()))
        }
    }

    static GARBAGE: Impostor = Impostor(r"printf '\003\000\000\000\377\377\377'; exec sleep 5");
    static TRUNCATED: Impostor = Impostor(r"printf '\010\000\000\000abc'");
    static HUGE: Impostor = Impostor(r"printf '\377\377\377\177'; exec sleep 5");
    static SILENT: Impostor = Impostor("exit 3");

    fn start(t: &'static Impostor) -> Error {
        Pool::builder()
            .processes(1)
            .transport(t as &'static dyn Transport)
            .build()
            .unwrap_err()
    }

    /// A first frame of the wrong kind: `Done { id: 1, count: 1 }` instead of `Hello`.
    static WRONG_KIND: Impostor = Impostor(r"printf '\003\000\000\000\001\001\001'; exec sleep 5");

    #[test]
    fn a_first_frame_of_the_wrong_kind_is_named() {
        let e = start(&WRONG_KIND);
        assert!(
            matches!(&e, Error::Protocol(m) if m.contains("expected a handshake, got Done")),
            "{e:?}"
        );
    }

    #[test]
    fn garbage_truncated_and_oversized_frames_are_protocol_errors() {
        let e = start(&GARBAGE);
        assert!(
            matches!(&e, Error::Protocol(m) if m.contains("malformed")),
            "{e:?}"
        );
        let e = start(&TRUNCATED);
        assert!(
            matches!(&e, Error::Protocol(m) if m.contains("got 3 of 8")),
            "{e:?}"
        );
        let e = start(&HUGE);
        assert!(
            matches!(&e, Error::Protocol(m) if m.contains("over the limit")),
            "{e:?}"
        );
    }

    #[test]
    fn a_worker_that_exits_before_the_handshake_is_a_startup_error() {
        let e = start(&SILENT);
        assert!(
            matches!(&e, Error::Startup(m) if m.contains("exited with code 3")),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("procpool::init()"),
            "the message says what to check: {e}"
        );
    }
}

/// The default transport for the first worker, then a transport that cannot start any.
#[derive(Debug)]
struct OneShot(AtomicUsize);

fn default_transport() -> &'static dyn Transport {
    use procpool_core::IntoTransport;
    #[cfg(feature = "pipe")]
    let transport = procpool::Transport::Pipe;
    #[cfg(not(feature = "pipe"))]
    let transport = procpool::Transport::Ipc;
    transport.into_transport()
}

impl Transport for OneShot {
    fn name(&self) -> &'static str {
        default_transport().name()
    }

    fn spawn(&self, command: Command, config: LinkConfig) -> Result<(Child, Link), Error> {
        if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            default_transport().spawn(command, config)
        } else {
            Err(Error::Startup("no more workers today".into()))
        }
    }

    fn connect(&self, config: LinkConfig) -> Result<Link, Error> {
        default_transport().connect(config)
    }
}

static ONE_SHOT: OneShot = OneShot(AtomicUsize::new(0));

#[procpool::pool_task]
fn quit() {
    std::process::exit(1)
}

#[test]
fn when_no_worker_can_be_started_again_calls_fail_instead_of_waiting() {
    let pool = Pool::builder()
        .processes(1)
        .transport(&ONE_SHOT as &'static dyn Transport)
        .build()
        .unwrap();
    assert!(matches!(
        pool.apply(quit, ()),
        Err(Error::WorkerDied { .. })
    ));
    for _ in 0..3 {
        let err = pool.apply(quit, ()).unwrap_err();
        assert!(
            matches!(&err, Error::Startup(m) if m.contains("no more workers")),
            "{err:?}"
        );
    }
}

/// The default transport, but the worker is told a different secret than the pool's.
#[derive(Debug)]
struct WrongSecret;

impl Transport for WrongSecret {
    fn name(&self) -> &'static str {
        default_transport().name()
    }

    fn spawn(&self, mut command: Command, config: LinkConfig) -> Result<(Child, Link), Error> {
        let marker = command
            .get_envs()
            .find(|(k, _)| *k == "PROCPOOL_WORKER")
            .and_then(|(_, v)| v)
            .and_then(|v| v.to_str())
            .map(str::to_owned)
            .expect("the pool sets the marker");
        let (head, secret) = marker
            .rsplit_once(':')
            .expect("marker ends with the secret");
        let forged = format!("{head}:{}", if secret.starts_with('0') { "1" } else { "0" });
        command.env("PROCPOOL_WORKER", forged);
        default_transport().spawn(command, config)
    }

    fn connect(&self, config: LinkConfig) -> Result<Link, Error> {
        default_transport().connect(config)
    }
}

static WRONG_SECRET: WrongSecret = WrongSecret;

#[test]
fn a_worker_without_the_pools_secret_is_refused() {
    let err = Pool::builder()
        .processes(1)
        .transport(&WRONG_SECRET as &'static dyn Transport)
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Protocol(m) if m.contains("secret")),
        "{err:?}"
    );
}
