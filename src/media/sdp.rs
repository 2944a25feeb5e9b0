//! SDP offer/answer for one G.711 audio stream (RFC 3264 on RFC 4566 bodies), sans-IO.
//!
//! ```text
//!            handle_offer (remote offer → our answer)
//!   Idle ───────────────────────────────────────────────▶ Done ─┐
//!    │   create_offer          handle_answer                ▲   │ re-INVITE / UPDATE:
//!    └──────────────▶ LocalOffer ──────────────────────────┘   │ handle_offer or
//!                        ▲                                      │ create_offer again
//!                        └──────────────────────────────────────┘
//! ```
//! `RemoteOffer` (RFC 3264 §5 "offer received") is passed through inside [`Negotiator::handle_offer`]:
//! the offer is checked and answered in one call, so it never rests there. A rejected offer leaves
//! the machine as it was (RFC 3264 §8: a refused re-offer keeps the old session).
//!
//! In: SDP bodies from INVITE / 200 OK / ACK / UPDATE, as bytes. Out: the SDP body to send
//! (answer or offer) and a [`Negotiated`] summary (codec, payload types, remote RTP/RTCP address,
//! ptime, direction) for the RTP side.
//!
//! Rules applied:
//! - PCMU preferred, PCMA accepted; telephone-event/8000 (RFC 4733) answered with the offerer's PT.
//! - The answer has as many m= lines as the offer, in the same order (RFC 3264 §6); streams we do
//!   not take (video, a second audio, SRTP, …) are refused with port 0.
//! - Direction (RFC 3264 §6.1, §8.4): our direction is the offer's reversed, limited by our own hold
//!   state. The pre-RFC 3264 hold `c=0.0.0.0` (RFC 2543) is read as "the offerer will not receive".
//! - `o=` version (RFC 3264 §8): incremented exactly when the body we send changes; an unchanged
//!   re-offer (session-timer refresh) gets the byte-identical body back.
//! - RTCP goes to `a=rtcp` (RFC 3605) when present, else to RTP port + 1 (RFC 3550 §11).

use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ::sdp::description::common::{Address, Attribute, ConnectionInformation};
use ::sdp::description::media::{MediaName, RangedPort};
use ::sdp::description::session::{Origin, TimeDescription, Timing};
use ::sdp::{MediaDescription, SessionDescription};
use bytes::Bytes;

use crate::media::G711;

/// Payload type we offer for telephone-event/8000 (the value Asterisk and FreeSWITCH use).
pub const TELEPHONE_EVENT_PT: u8 = 101;
/// RTP packetisation time assumed when the peer does not say (RFC 3551 §4.5: 20 ms for G.711).
pub const DEFAULT_PTIME: Duration = Duration::from_millis(20);
/// Larger SDP bodies are refused before parsing; real audio offers are well under 2 KiB.
const MAX_SDP_LEN: usize = 64 * 1024;
/// The only transport profile we answer: plain RTP, no SRTP, no AVPF feedback.
const AUDIO_PROFILE: &str = "RTP/AVP";
/// a=ptime values outside this range are ignored and the default is used.
const PTIME_RANGE_MS: std::ops::RangeInclusive<u64> = 10..=120;

/// Our side of the media session: what we advertise in `o=`, `c=` and `m=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMedia {
    /// Address advertised in `o=` and `c=` (the public address when behind NAT).
    pub address: IpAddr,
    /// Our RTP port; RTCP is on `rtp_port + 1`.
    pub rtp_port: u16,
    /// Packetisation time we ask for in `a=ptime` when the offer gives none.
    pub ptime: Duration,
    /// The `s=` line.
    pub session_name: String,
    /// The codecs a first offer lists, in preference order (both G.711 laws by default; a
    /// bridged transfer's agent leg offers only the caller's, so audio is relayed untranscoded).
    pub offer_codecs: Vec<G711>,
}

impl LocalMedia {
    /// Local media at `address:rtp_port` with 20 ms ptime and session name `voxgate`.
    pub fn new(address: IpAddr, rtp_port: u16) -> Self {
        Self {
            address,
            rtp_port,
            ptime: DEFAULT_PTIME,
            session_name: "voxgate".to_owned(),
            offer_codecs: vec![G711::Pcmu, G711::Pcma],
        }
    }
}

/// Media direction of a stream (RFC 3264 §5.1), always seen from one named side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Both ways.
    SendRecv,
    /// This side sends only.
    SendOnly,
    /// This side receives only.
    RecvOnly,
    /// No media either way.
    Inactive,
}

impl Direction {
    fn from_flags(send: bool, receive: bool) -> Self {
        match (send, receive) {
            (true, true) => Self::SendRecv,
            (true, false) => Self::SendOnly,
            (false, true) => Self::RecvOnly,
            (false, false) => Self::Inactive,
        }
    }

    /// Whether this side may send RTP.
    pub fn is_sending(self) -> bool {
        matches!(self, Self::SendRecv | Self::SendOnly)
    }

    /// Whether this side expects to receive RTP.
    pub fn is_receiving(self) -> bool {
        matches!(self, Self::SendRecv | Self::RecvOnly)
    }

    /// The same stream seen from the other side (sendonly ↔ recvonly).
    pub fn reversed(self) -> Self {
        Self::from_flags(self.is_receiving(), self.is_sending())
    }

    /// What both `self` and `other` allow.
    fn intersect(self, other: Self) -> Self {
        Self::from_flags(
            self.is_sending() && other.is_sending(),
            self.is_receiving() && other.is_receiving(),
        )
    }

    /// The SDP attribute name.
    pub fn attribute(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    fn from_attribute(key: &str) -> Option<Self> {
        match key {
            "sendrecv" => Some(Self::SendRecv),
            "sendonly" => Some(Self::SendOnly),
            "recvonly" => Some(Self::RecvOnly),
            "inactive" => Some(Self::Inactive),
            _ => None,
        }
    }
}

/// The outcome of a completed offer/answer exchange, for the RTP side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The G.711 variant both sides send.
    pub codec: G711,
    /// Payload type number for `codec` (0 or 8 unless the offer mapped it dynamically).
    pub payload_type: u8,
    /// PT of telephone-event/8000 (RFC 4733) when both sides have it.
    pub telephone_event: Option<u8>,
    /// Where to send RTP: `c=` + `m=` port; `None` when the port is 0 or the address is
    /// unspecified (`0.0.0.0` / `::` hold).
    pub remote_rtp: Option<SocketAddr>,
    /// Where to send RTCP: `a=rtcp` (RFC 3605), else RTP port + 1.
    pub remote_rtcp: Option<SocketAddr>,
    /// Packetisation time to send with: the remote `a=ptime`, else 20 ms.
    pub ptime: Duration,
    /// OUR direction: whether we may send and should expect to receive.
    pub direction: Direction,
    /// The remote side's effective direction (`c=0.0.0.0` removes its receive half).
    pub remote_direction: Direction,
}

/// Why an SDP offer or answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// The body is not SDP we can parse (or is larger than 64 KiB).
    #[error("SDP body is not parseable: {reason}")]
    Unparseable {
        /// The parser's complaint.
        reason: String,
    },
    /// No usable RTP/AVP audio stream (none offered, all port 0, or only SRTP).
    #[error("SDP has no usable RTP/AVP audio stream")]
    NoAudio,
    /// Audio was offered but neither PCMU nor PCMA.
    #[error("no common audio codec; offered {offered:?}")]
    NoCommonCodec {
        /// The offered formats, as `NAME/rate` or `pt N`.
        offered: Vec<String>,
    },
    /// The audio stream's `c=` is missing or not an IP address (e.g. an FQDN).
    #[error("audio connection address {address:?} is missing or not an IP address")]
    BadConnectionAddress {
        /// The `c=` address as written, empty when there is none.
        address: String,
    },
    /// The answer's m= line count differs from our offer's (RFC 3264 §6).
    #[error("the answer has {answered} m= lines, our offer had {offered}")]
    MediaCountMismatch {
        /// m= lines in our offer.
        offered: usize,
        /// m= lines in the answer.
        answered: usize,
    },
    /// A re-offer with fewer m= lines than the current session (RFC 3264 §8 forbids removal).
    #[error("the re-offer has {offered} m= lines, the session has {previous}")]
    MediaLinesRemoved {
        /// m= lines in the current session.
        previous: usize,
        /// m= lines in the re-offer.
        offered: usize,
    },
    /// An offer arrived while ours is outstanding (RFC 3261 §14.2 glare).
    #[error("offer received while our own offer is outstanding")]
    Glare,
    /// An answer arrived but we have no offer outstanding.
    #[error("answer received with no offer outstanding")]
    NoOfferPending,
}

impl OfferError {
    /// The SIP status to reject the request carrying the offer with.
    ///
    /// 400 for a malformed body, 491 for glare, 500 for an out-of-state answer (our bug or a
    /// confused peer), else 488 Not Acceptable Here (RFC 3261 §21.4.26).
    pub fn status(&self) -> u16 {
        match self {
            Self::Unparseable { .. } => 400,
            Self::Glare => 491,
            Self::NoOfferPending => 500,
            Self::NoAudio
            | Self::NoCommonCodec { .. }
            | Self::BadConnectionAddress { .. }
            | Self::MediaCountMismatch { .. }
            | Self::MediaLinesRemoved { .. } => 488,
        }
    }
}

/// Offer/answer state (RFC 3264 §4); `RemoteOffer` is transient inside `handle_offer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    LocalOffer {
        audio_index: usize,
        media_count: usize,
    },
    Done,
}

/// The last body we sent, kept so an unchanged one is resent byte for byte.
#[derive(Debug, Clone)]
struct Sent {
    /// The body serialised with `o=` version 0: equal keys mean equal content.
    key: String,
    body: Bytes,
    media: Vec<MediaDescription>,
    audio_index: usize,
}

/// One side of an RFC 3264 offer/answer session, across the initial exchange and re-INVITEs.
#[derive(Debug)]
pub struct Negotiator {
    local: LocalMedia,
    session_id: u64,
    version: u64,
    state: State,
    held: bool,
    negotiated: Option<Negotiated>,
    last_sent: Option<Sent>,
}

impl Negotiator {
    /// A negotiator in `Idle` with a random `o=` session id; the version starts at the same value.
    pub fn new(local: LocalMedia) -> Self {
        // RFC 4566 §5.2 only asks for uniqueness; 31 bits keeps the id and version inside a
        // signed 32-bit integer, which some older PBXs parse them into.
        let session_id = u64::from(rand::random::<u32>() >> 1);
        Self::with_session_id(local, session_id)
    }

    fn with_session_id(local: LocalMedia, session_id: u64) -> Self {
        Self {
            local,
            session_id,
            version: session_id,
            state: State::Idle,
            held: false,
            negotiated: None,
            last_sent: None,
        }
    }

    /// Answer a remote offer (initial INVITE, re-INVITE or UPDATE): `Idle`/`Done` → `Done`.
    ///
    /// Returns the answer body and the new session. On error nothing changes: reject the request
    /// with [`OfferError::status`] and keep the previous session, if any.
    pub fn handle_offer(&mut self, sdp: &[u8]) -> Result<(Bytes, Negotiated), OfferError> {
        if matches!(self.state, State::LocalOffer { .. }) {
            return Err(OfferError::Glare);
        }
        let offer = parse(sdp)?;
        let offered_media = &offer.media_descriptions;
        if let Some(previous) = &self.last_sent {
            if offered_media.len() < previous.media.len() {
                return Err(OfferError::MediaLinesRemoved {
                    previous: previous.media.len(),
                    offered: offered_media.len(),
                });
            }
        }

        let (audio_index, remote) = choose_offered_audio(&offer)?;
        let ours = remote
            .direction
            .reversed()
            .intersect(self.wanted_direction());
        let ptime_ms = duration_ms(remote.ptime.unwrap_or(self.local.ptime));
        let mut audio = self.audio_media(remote.protos.clone());
        audio.media_name.formats = vec![remote.payload_type.to_string()];
        push_rtpmap(&mut audio, remote.payload_type, remote.codec);
        if let Some(event) = &remote.telephone_event {
            audio
                .media_name
                .formats
                .push(event.payload_type.to_string());
            push_telephone_event(&mut audio, event.payload_type, &event.fmtp);
        }
        push_ptime_and_direction(&mut audio, ptime_ms, ours);

        let media = offered_media
            .iter()
            .enumerate()
            .map(|(index, offered)| {
                if index == audio_index {
                    audio.clone()
                } else {
                    rejected(offered)
                }
            })
            .collect();
        let answer = self.finish(media, audio_index);
        let negotiated = remote.negotiated(ours);
        self.state = State::Done;
        self.negotiated = Some(negotiated.clone());
        Ok((answer, negotiated))
    }

    /// Our offer, for an offer-less INVITE (initial) or a re-INVITE/UPDATE we send: → `LocalOffer`.
    ///
    /// The first offer lists PCMU, PCMA and telephone-event/8000 (PT 101). After a completed
    /// exchange the re-offer repeats the last body we sent with only the direction updated from
    /// [`set_hold`](Self::set_hold), so a session refresh re-offer is byte-identical and keeps
    /// the `o=` version. Calling it again while the offer is outstanding returns the same body.
    pub fn create_offer(&mut self) -> Bytes {
        let wanted = self.wanted_direction();
        let (media, audio_index) = match (&self.last_sent, &self.negotiated) {
            (Some(sent), Some(_)) => {
                let mut media = sent.media.clone();
                if let Some(audio) = media.get_mut(sent.audio_index) {
                    set_direction(audio, wanted);
                }
                (media, sent.audio_index)
            }
            _ => {
                let ptime_ms = duration_ms(self.local.ptime);
                let mut audio = self.audio_media(vec!["RTP".to_owned(), "AVP".to_owned()]);
                audio.media_name.formats = Vec::new();
                for codec in &self.local.offer_codecs {
                    let payload_type = match codec {
                        G711::Pcmu => 0,
                        G711::Pcma => 8,
                    };
                    audio.media_name.formats.push(payload_type.to_string());
                    push_rtpmap(&mut audio, payload_type, *codec);
                }
                audio
                    .media_name
                    .formats
                    .push(TELEPHONE_EVENT_PT.to_string());
                push_telephone_event(&mut audio, TELEPHONE_EVENT_PT, &None);
                push_ptime_and_direction(&mut audio, ptime_ms, wanted);
                (vec![audio], 0)
            }
        };
        let media_count = media.len();
        let offer = self.finish(media, audio_index);
        self.state = State::LocalOffer {
            audio_index,
            media_count,
        };
        offer
    }

    /// Take the answer to our offer (from 200 OK, ACK or the UPDATE response): `LocalOffer` → `Done`.
    ///
    /// On error the previous session (if any) stays in force; the caller ends the call or re-offers.
    pub fn handle_answer(&mut self, sdp: &[u8]) -> Result<Negotiated, OfferError> {
        let State::LocalOffer {
            audio_index,
            media_count,
        } = self.state
        else {
            return Err(OfferError::NoOfferPending);
        };
        let result = self.check_answer(sdp, audio_index, media_count);
        self.state = if self.negotiated.is_some() {
            State::Done
        } else {
            State::Idle
        };
        let negotiated = result?;
        self.state = State::Done;
        self.negotiated = Some(negotiated.clone());
        Ok(negotiated)
    }

    /// Our offer was refused (a non-2xx final response to our re-INVITE or UPDATE, or none at
    /// all): `LocalOffer` → back to the session in force, `Done` (or `Idle` before any).
    ///
    /// RFC 3261 §14.1: after a failed re-INVITE the session parameters stay as they were, so
    /// the peer's next offer must be answered, not refused as glare.
    pub fn withdraw_offer(&mut self) {
        if matches!(self.state, State::LocalOffer { .. }) {
            self.state = if self.negotiated.is_some() {
                State::Done
            } else {
                State::Idle
            };
        }
    }

    /// Put the call on hold (or resume it) at the next offer or answer.
    ///
    /// While held we offer/answer `sendonly` at most (RFC 3264 §8.4). Nothing is sent by this
    /// call: follow it with [`create_offer`](Self::create_offer) in a re-INVITE or UPDATE.
    pub fn set_hold(&mut self, held: bool) {
        self.held = held;
    }

    /// The session in force after the last completed exchange, if any.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// Whether an offer of ours awaits its answer.
    pub fn is_offer_pending(&self) -> bool {
        matches!(self.state, State::LocalOffer { .. })
    }

    fn wanted_direction(&self) -> Direction {
        if self.held {
            Direction::SendOnly
        } else {
            Direction::SendRecv
        }
    }

    fn check_answer(
        &self,
        sdp: &[u8],
        audio_index: usize,
        media_count: usize,
    ) -> Result<Negotiated, OfferError> {
        let answer = parse(sdp)?;
        let answered = answer.media_descriptions.len();
        if answered != media_count {
            return Err(OfferError::MediaCountMismatch {
                offered: media_count,
                answered,
            });
        }
        let media = answer
            .media_descriptions
            .get(audio_index)
            .ok_or(OfferError::NoAudio)?;
        if !is_usable_audio(media) {
            return Err(OfferError::NoAudio);
        }
        let offered_formats: Vec<String> = self
            .last_sent
            .as_ref()
            .and_then(|sent| sent.media.get(sent.audio_index))
            .map(|ours| ours.media_name.formats.clone())
            .unwrap_or_default();
        let remote = RemoteAudio::read(&answer, media, Preference::AnswerOrder, &offered_formats)?;
        let offered_direction = self.wanted_direction();
        Ok(remote.negotiated(remote.direction.reversed().intersect(offered_direction)))
    }

    /// Our audio m= section with no formats or attributes yet.
    fn audio_media(&self, protos: Vec<String>) -> MediaDescription {
        MediaDescription {
            media_name: MediaName {
                media: "audio".to_owned(),
                port: RangedPort {
                    value: isize::try_from(self.local.rtp_port).unwrap_or(0),
                    range: None,
                },
                protos,
                formats: Vec::new(),
            },
            media_title: None,
            connection_information: None,
            bandwidth: Vec::new(),
            encryption_key: None,
            attributes: Vec::new(),
        }
    }

    /// Wrap `media` in a session, version it (RFC 3264 §8) and remember it.
    fn finish(&mut self, media: Vec<MediaDescription>, audio_index: usize) -> Bytes {
        let mut session = self.session(media);
        let key = session.marshal();
        if let Some(sent) = &self.last_sent {
            if sent.key == key {
                return sent.body.clone();
            }
            self.version = self.version.wrapping_add(1);
        }
        session.origin.session_version = self.version;
        let body = Bytes::from(session.marshal());
        self.last_sent = Some(Sent {
            key,
            body: body.clone(),
            media: session.media_descriptions,
            audio_index,
        });
        body
    }

    /// Our session description with `o=` version 0 (set by `finish`).
    fn session(&self, media: Vec<MediaDescription>) -> SessionDescription {
        let address_type = match self.local.address {
            IpAddr::V4(_) => "IP4",
            IpAddr::V6(_) => "IP6",
        };
        SessionDescription {
            version: 0,
            origin: Origin {
                username: "-".to_owned(),
                session_id: self.session_id,
                session_version: 0,
                network_type: "IN".to_owned(),
                address_type: address_type.to_owned(),
                unicast_address: self.local.address.to_string(),
            },
            session_name: self.local.session_name.clone(),
            session_information: None,
            uri: None,
            email_address: None,
            phone_number: None,
            connection_information: Some(ConnectionInformation {
                network_type: "IN".to_owned(),
                address_type: address_type.to_owned(),
                address: Some(Address {
                    address: self.local.address.to_string(),
                    ttl: None,
                    range: None,
                }),
            }),
            bandwidth: Vec::new(),
            time_descriptions: vec![TimeDescription {
                timing: Timing {
                    start_time: 0,
                    stop_time: 0,
                },
                repeat_times: Vec::new(),
            }],
            time_zones: Vec::new(),
            encryption_key: None,
            attributes: Vec::new(),
            media_descriptions: media,
        }
    }
}

/// Parse an SDP body, refusing oversized or malformed input with an error.
fn parse(body: &[u8]) -> Result<SessionDescription, OfferError> {
    if body.len() > MAX_SDP_LEN {
        return Err(OfferError::Unparseable {
            reason: format!("body of {} bytes exceeds {MAX_SDP_LEN}", body.len()),
        });
    }
    let session = SessionDescription::unmarshal(&mut Cursor::new(body)).map_err(|error| {
        OfferError::Unparseable {
            reason: error.to_string(),
        }
    })?;
    if session.time_descriptions.is_empty() {
        // RFC 4566 §5: t= is mandatory; the crate accepts its absence.
        return Err(OfferError::Unparseable {
            reason: "no t= line".to_owned(),
        });
    }
    Ok(session)
}

/// Pick the first audio stream of the offer that has a codec we take.
fn choose_offered_audio(offer: &SessionDescription) -> Result<(usize, RemoteAudio), OfferError> {
    let mut offered_codecs = Vec::new();
    let mut first_error = None;
    for (index, media) in offer.media_descriptions.iter().enumerate() {
        if !is_usable_audio(media) {
            continue;
        }
        match RemoteAudio::read(offer, media, Preference::Ours, &[]) {
            Ok(remote) => return Ok((index, remote)),
            Err(OfferError::NoCommonCodec { offered }) => offered_codecs.extend(offered),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    if offered_codecs.is_empty() {
        Err(OfferError::NoAudio)
    } else {
        Err(OfferError::NoCommonCodec {
            offered: offered_codecs,
        })
    }
}

fn is_usable_audio(media: &MediaDescription) -> bool {
    media.media_name.media == "audio"
        && media.media_name.protos.join("/") == AUDIO_PROFILE
        && media.media_name.port.value != 0
}

/// How to pick among several acceptable codecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preference {
    /// Remote offer: PCMU over PCMA whatever the offer's order.
    Ours,
    /// Remote answer: the answerer's first acceptable format (RFC 3264 §6.1 preference order).
    AnswerOrder,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct TelephoneEvent {
    payload_type: u8,
    fmtp: Option<String>,
}

/// What the remote side said about its audio stream.
#[derive(Debug, Clone)]
struct RemoteAudio {
    protos: Vec<String>,
    codec: G711,
    payload_type: u8,
    telephone_event: Option<TelephoneEvent>,
    rtp: Option<SocketAddr>,
    rtcp: Option<SocketAddr>,
    ptime: Option<Duration>,
    /// Effective direction: the declared one, minus receiving when `c=` is unspecified.
    direction: Direction,
}

impl RemoteAudio {
    /// Read one audio m= section; `allowed` (when non-empty) limits the payload types accepted.
    fn read(
        session: &SessionDescription,
        media: &MediaDescription,
        preference: Preference,
        allowed: &[String],
    ) -> Result<Self, OfferError> {
        let mut candidates = Vec::new();
        let mut telephone_event = None;
        let mut offered = Vec::new();
        for format in &media.media_name.formats {
            let Ok(payload_type) = format.parse::<u8>() else {
                offered.push(format.clone());
                continue;
            };
            let encoding = encoding_of(media, payload_type);
            offered.push(match &encoding {
                Some((name, rate)) => format!("{name}/{rate}"),
                None => format!("pt {payload_type}"),
            });
            if !allowed.is_empty() && !allowed.contains(format) {
                continue;
            }
            let Some((name, rate)) = encoding else {
                continue;
            };
            match (name.to_ascii_uppercase().as_str(), rate) {
                ("PCMU", 8000) => candidates.push((G711::Pcmu, payload_type)),
                ("PCMA", 8000) => candidates.push((G711::Pcma, payload_type)),
                ("TELEPHONE-EVENT", 8000) if telephone_event.is_none() => {
                    telephone_event = Some(TelephoneEvent {
                        payload_type,
                        fmtp: fmtp_of(media, payload_type),
                    });
                }
                _ => {}
            }
        }
        let chosen = match preference {
            Preference::Ours => candidates
                .iter()
                .find(|(codec, _)| *codec == G711::Pcmu)
                .or_else(|| candidates.first()),
            Preference::AnswerOrder => candidates.first(),
        };
        let Some(&(codec, payload_type)) = chosen else {
            return Err(OfferError::NoCommonCodec { offered });
        };

        let connection = media
            .connection_information
            .as_ref()
            .or(session.connection_information.as_ref());
        let written = connection
            .and_then(|connection| connection.address.as_ref())
            .map(|address| address.address.clone())
            .unwrap_or_default();
        // c= may carry "/ttl" for multicast; we only do unicast, so the bare address must parse.
        let address: IpAddr = written
            .parse()
            .map_err(|_| OfferError::BadConnectionAddress {
                address: written.clone(),
            })?;
        let port = u16::try_from(media.media_name.port.value).unwrap_or(0);
        let declared = direction_of(session, media);
        let (rtp, rtcp, direction) = if address.is_unspecified() {
            // RFC 3264 §8.4 / RFC 2543 hold: the offerer will not receive, whatever it declares.
            (
                None,
                None,
                Direction::from_flags(declared.is_sending(), false),
            )
        } else if port == 0 {
            (None, None, declared)
        } else {
            let rtp = SocketAddr::new(address, port);
            let rtcp = rtcp_of(media, address).or_else(|| {
                port.checked_add(1)
                    .map(|rtcp_port| SocketAddr::new(address, rtcp_port))
            });
            (Some(rtp), rtcp, declared)
        };
        Ok(Self {
            protos: media.media_name.protos.clone(),
            codec,
            payload_type,
            telephone_event,
            rtp,
            rtcp,
            ptime: ptime_of(session, media),
            direction,
        })
    }

    fn negotiated(&self, ours: Direction) -> Negotiated {
        Negotiated {
            codec: self.codec,
            payload_type: self.payload_type,
            telephone_event: self
                .telephone_event
                .as_ref()
                .map(|event| event.payload_type),
            remote_rtp: self.rtp,
            remote_rtcp: self.rtcp,
            ptime: self.ptime.unwrap_or(DEFAULT_PTIME),
            direction: ours,
            remote_direction: self.direction,
        }
    }
}

/// The encoding of `payload_type`: its a=rtpmap, else the RFC 3551 static assignment.
fn encoding_of(media: &MediaDescription, payload_type: u8) -> Option<(String, u32)> {
    for (key, value) in value_attributes(media) {
        if key != "rtpmap" {
            continue;
        }
        let Some((pt, encoding)) = value.trim().split_once(char::is_whitespace) else {
            continue;
        };
        if pt.parse::<u8>().ok() != Some(payload_type) {
            continue;
        }
        let mut parts = encoding.trim().split('/');
        let name = parts.next().unwrap_or_default().to_owned();
        let rate = parts.next().and_then(|rate| rate.parse().ok())?;
        return Some((name, rate));
    }
    let name = match payload_type {
        0 => "PCMU",
        3 => "GSM",
        4 => "G723",
        8 => "PCMA",
        9 => "G722",
        13 => "CN",
        18 => "G729",
        _ => return None,
    };
    Some((name.to_owned(), 8000))
}

fn fmtp_of(media: &MediaDescription, payload_type: u8) -> Option<String> {
    value_attributes(media).find_map(|(key, value)| {
        let (pt, parameters) = value.trim().split_once(char::is_whitespace)?;
        (key == "fmtp" && pt.parse::<u8>().ok() == Some(payload_type))
            .then(|| parameters.trim().to_owned())
    })
}

fn value_attributes(media: &MediaDescription) -> impl Iterator<Item = (&str, &str)> {
    media
        .attributes
        .iter()
        .filter_map(|attribute| Some((attribute.key.as_str(), attribute.value.as_deref()?)))
}

/// Media-level direction attribute, else session-level, else sendrecv (RFC 3264 §5.1).
fn direction_of(session: &SessionDescription, media: &MediaDescription) -> Direction {
    let find = |attributes: &[Attribute]| {
        attributes
            .iter()
            .find_map(|attribute| Direction::from_attribute(&attribute.key))
    };
    find(&media.attributes)
        .or_else(|| find(&session.attributes))
        .unwrap_or(Direction::SendRecv)
}

/// a=ptime at media level, else session level (seen from some gateways), within 10–120 ms.
fn ptime_of(session: &SessionDescription, media: &MediaDescription) -> Option<Duration> {
    let value = media
        .attribute("ptime")
        .flatten()
        .or_else(|| session.attribute("ptime").map(String::as_str))?;
    // Some gateways write "20.00"; the integer part is what counts.
    let whole = value.trim().split('.').next()?;
    let millis: u64 = whole.parse().ok()?;
    PTIME_RANGE_MS
        .contains(&millis)
        .then(|| Duration::from_millis(millis))
}

/// a=rtcp:port [IN IP4 address] (RFC 3605 §2.1).
fn rtcp_of(media: &MediaDescription, rtp_address: IpAddr) -> Option<SocketAddr> {
    let value = media.attribute("rtcp").flatten()?;
    let mut fields = value.split_whitespace();
    let port: u16 = fields.next()?.parse().ok()?;
    let address = match (fields.next(), fields.next(), fields.next()) {
        (Some("IN"), Some(_), Some(address)) => address.parse().ok()?,
        _ => rtp_address,
    };
    (port != 0).then(|| SocketAddr::new(address, port))
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// RFC 3264 §6: a refused stream keeps its media, profile and formats, with port 0.
fn rejected(offered: &MediaDescription) -> MediaDescription {
    MediaDescription {
        media_name: MediaName {
            media: offered.media_name.media.clone(),
            port: RangedPort {
                value: 0,
                range: None,
            },
            protos: offered.media_name.protos.clone(),
            formats: offered.media_name.formats.clone(),
        },
        media_title: None,
        connection_information: None,
        bandwidth: Vec::new(),
        encryption_key: None,
        attributes: Vec::new(),
    }
}

fn push_rtpmap(media: &mut MediaDescription, payload_type: u8, codec: G711) {
    let name = match codec {
        G711::Pcmu => "PCMU",
        G711::Pcma => "PCMA",
    };
    media.attributes.push(Attribute::new(
        "rtpmap".to_owned(),
        Some(format!("{payload_type} {name}/8000")),
    ));
}

fn push_telephone_event(media: &mut MediaDescription, payload_type: u8, fmtp: &Option<String>) {
    media.attributes.push(Attribute::new(
        "rtpmap".to_owned(),
        Some(format!("{payload_type} telephone-event/8000")),
    ));
    let events = fmtp.as_deref().unwrap_or("0-16");
    media.attributes.push(Attribute::new(
        "fmtp".to_owned(),
        Some(format!("{payload_type} {events}")),
    ));
}

fn push_ptime_and_direction(media: &mut MediaDescription, ptime_ms: u64, direction: Direction) {
    media.attributes.push(Attribute::new(
        "ptime".to_owned(),
        Some(ptime_ms.to_string()),
    ));
    media
        .attributes
        .push(Attribute::new(direction.attribute().to_owned(), None));
}

fn set_direction(media: &mut MediaDescription, direction: Direction) {
    for attribute in &mut media.attributes {
        if Direction::from_attribute(&attribute.key).is_some() {
            attribute.key = direction.attribute().to_owned();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    /// Asterisk 18 chan_pjsip offer (INVITE to the trunk), with GSM as a third codec.
    const ASTERISK_OFFER: &str = "v=0\r\n\
        o=- 1718291425 1718291425 IN IP4 192.168.1.10\r\n\
        s=Asterisk\r\n\
        c=IN IP4 192.168.1.10\r\n\
        t=0 0\r\n\
        m=audio 10000 RTP/AVP 0 8 3 101\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:3 GSM/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-16\r\n\
        a=ptime:20\r\n\
        a=maxptime:150\r\n\
        a=sendrecv\r\n";

    /// FreeSWITCH 1.10 offer: PCMA first, CN, explicit a=rtcp.
    const FREESWITCH_OFFER: &str = "v=0\r\n\
        o=FreeSWITCH 1718268432 1718268433 IN IP4 10.0.0.5\r\n\
        s=FreeSWITCH\r\n\
        c=IN IP4 10.0.0.5\r\n\
        t=0 0\r\n\
        m=audio 24580 RTP/AVP 8 0 101 13\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-16\r\n\
        a=rtpmap:13 CN/8000\r\n\
        a=ptime:20\r\n\
        a=sendrecv\r\n\
        a=rtcp:24581 IN IP4 10.0.0.5\r\n";

    /// Telnyx-style carrier offer: G722 first, telephone-event on PT 96, media-level c=.
    const TELNYX_OFFER: &str = "v=0\r\n\
        o=Telnyx 1718300000 1718300001 IN IP4 192.76.120.10\r\n\
        s=Telnyx\r\n\
        t=0 0\r\n\
        m=audio 20530 RTP/AVP 9 0 8 96\r\n\
        c=IN IP4 192.76.120.31\r\n\
        a=rtpmap:9 G722/8000\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:96 telephone-event/8000\r\n\
        a=fmtp:96 0-15\r\n\
        a=ptime:20\r\n";

    const G729_ONLY_OFFER: &str = "v=0\r\n\
        o=- 1 1 IN IP4 198.51.100.7\r\n\
        s=-\r\n\
        c=IN IP4 198.51.100.7\r\n\
        t=0 0\r\n\
        m=audio 16000 RTP/AVP 18 101\r\n\
        a=rtpmap:18 G729/8000\r\n\
        a=fmtp:18 annexb=no\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=sendrecv\r\n";

    /// PCMA without any rtpmap (static payload type only), no telephone-event.
    const PCMA_ONLY_OFFER: &str = "v=0\r\n\
        o=- 2 2 IN IP4 198.51.100.8\r\n\
        s=-\r\n\
        c=IN IP4 198.51.100.8\r\n\
        t=0 0\r\n\
        m=audio 16002 RTP/AVP 8\r\n";

    const SENDONLY_HOLD_OFFER: &str = "v=0\r\n\
        o=- 1718291425 1718291426 IN IP4 192.168.1.10\r\n\
        s=Asterisk\r\n\
        c=IN IP4 192.168.1.10\r\n\
        t=0 0\r\n\
        m=audio 10000 RTP/AVP 0 101\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-16\r\n\
        a=ptime:20\r\n\
        a=sendonly\r\n";

    /// Direction at session level only.
    const INACTIVE_OFFER: &str = "v=0\r\n\
        o=- 5 6 IN IP4 192.168.1.10\r\n\
        s=-\r\n\
        c=IN IP4 192.168.1.10\r\n\
        t=0 0\r\n\
        a=inactive\r\n\
        m=audio 10000 RTP/AVP 0\r\n";

    const RECVONLY_OFFER: &str = "v=0\r\n\
        o=- 5 6 IN IP4 192.168.1.10\r\n\
        s=-\r\n\
        c=IN IP4 192.168.1.10\r\n\
        t=0 0\r\n\
        m=audio 10000 RTP/AVP 0\r\n\
        a=recvonly\r\n";

    /// RFC 2543 hold, as old Cisco and Avaya gear still send it.
    const ZERO_ADDRESS_HOLD_OFFER: &str = "v=0\r\n\
        o=CiscoSystemsSIP-GW-UserAgent 4513 2345 IN IP4 203.0.113.20\r\n\
        s=SIP Call\r\n\
        c=IN IP4 0.0.0.0\r\n\
        t=0 0\r\n\
        m=audio 17766 RTP/AVP 0 101\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-16\r\n";

    const PTIME_30_OFFER: &str = "v=0\r\n\
        o=- 7 7 IN IP4 198.51.100.9\r\n\
        s=-\r\n\
        c=IN IP4 198.51.100.9\r\n\
        t=0 0\r\n\
        m=audio 30000 RTP/AVP 0 8 101\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-16\r\n\
        a=ptime:30\r\n";

    /// A video phone: video first, then SRTP audio we refuse, then plain audio.
    const VIDEO_OFFER: &str = "v=0\r\n\
        o=- 8 8 IN IP4 198.51.100.10\r\n\
        s=-\r\n\
        c=IN IP4 198.51.100.10\r\n\
        t=0 0\r\n\
        m=video 40002 RTP/AVP 96 97\r\n\
        a=rtpmap:96 H264/90000\r\n\
        a=rtpmap:97 VP8/90000\r\n\
        m=audio 40004 RTP/SAVP 0\r\n\
        a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n\
        m=audio 40000 RTP/AVP 0 8 101\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=sendrecv\r\n";

    const IPV6_OFFER: &str = "v=0\r\n\
        o=- 9 9 IN IP6 2001:db8::10\r\n\
        s=-\r\n\
        c=IN IP6 2001:db8::10\r\n\
        t=0 0\r\n\
        m=audio 50000 RTP/AVP 0 101\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=rtcp:50011\r\n";

    fn local() -> LocalMedia {
        LocalMedia::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)), 40_000)
    }

    fn addr(text: &str) -> Option<SocketAddr> {
        Some(text.parse().expect("test address"))
    }

    /// Expected properties of our answer to one offer.
    struct Expect {
        codec: G711,
        payload_type: u8,
        telephone_event: Option<u8>,
        remote_rtp: Option<SocketAddr>,
        remote_rtcp: Option<SocketAddr>,
        ptime_ms: u64,
        direction: Direction,
        remote_direction: Direction,
        /// Answer m= lines: (media, port); port 40000 is ours, 0 refused.
        lines: Vec<(&'static str, u16)>,
    }

    fn accept(offer: &str) -> (Bytes, Negotiated) {
        Negotiator::new(local())
            .handle_offer(offer.as_bytes())
            .expect("offer accepted")
    }

    #[test]
    fn answers_table_of_realistic_offers() {
        use Direction::*;
        let sendrecv = |codec, payload_type, te, rtp: &str, rtcp: &str| Expect {
            codec,
            payload_type,
            telephone_event: te,
            remote_rtp: addr(rtp),
            remote_rtcp: addr(rtcp),
            ptime_ms: 20,
            direction: SendRecv,
            remote_direction: SendRecv,
            lines: vec![("audio", 40_000)],
        };
        let cases: Vec<(&str, &str, Expect)> = vec![
            (
                "asterisk",
                ASTERISK_OFFER,
                sendrecv(
                    G711::Pcmu,
                    0,
                    Some(101),
                    "192.168.1.10:10000",
                    "192.168.1.10:10001",
                ),
            ),
            (
                "freeswitch prefers PCMA, we still take PCMU",
                FREESWITCH_OFFER,
                sendrecv(G711::Pcmu, 0, Some(101), "10.0.0.5:24580", "10.0.0.5:24581"),
            ),
            (
                "telnyx media-level c= and te on 96",
                TELNYX_OFFER,
                sendrecv(
                    G711::Pcmu,
                    0,
                    Some(96),
                    "192.76.120.31:20530",
                    "192.76.120.31:20531",
                ),
            ),
            (
                "pcma only, static pt",
                PCMA_ONLY_OFFER,
                sendrecv(
                    G711::Pcma,
                    8,
                    None,
                    "198.51.100.8:16002",
                    "198.51.100.8:16003",
                ),
            ),
            (
                "sendonly hold",
                SENDONLY_HOLD_OFFER,
                Expect {
                    direction: RecvOnly,
                    remote_direction: SendOnly,
                    ..sendrecv(
                        G711::Pcmu,
                        0,
                        Some(101),
                        "192.168.1.10:10000",
                        "192.168.1.10:10001",
                    )
                },
            ),
            (
                "inactive at session level",
                INACTIVE_OFFER,
                Expect {
                    direction: Inactive,
                    remote_direction: Inactive,
                    ..sendrecv(
                        G711::Pcmu,
                        0,
                        None,
                        "192.168.1.10:10000",
                        "192.168.1.10:10001",
                    )
                },
            ),
            (
                "recvonly",
                RECVONLY_OFFER,
                Expect {
                    direction: SendOnly,
                    remote_direction: RecvOnly,
                    ..sendrecv(
                        G711::Pcmu,
                        0,
                        None,
                        "192.168.1.10:10000",
                        "192.168.1.10:10001",
                    )
                },
            ),
            (
                "c=0.0.0.0 hold",
                ZERO_ADDRESS_HOLD_OFFER,
                Expect {
                    remote_rtp: None,
                    remote_rtcp: None,
                    direction: RecvOnly,
                    remote_direction: SendOnly,
                    ..sendrecv(G711::Pcmu, 0, Some(101), "0.0.0.0:1", "0.0.0.0:1")
                },
            ),
            (
                "ptime 30",
                PTIME_30_OFFER,
                Expect {
                    ptime_ms: 30,
                    ..sendrecv(
                        G711::Pcmu,
                        0,
                        Some(101),
                        "198.51.100.9:30000",
                        "198.51.100.9:30001",
                    )
                },
            ),
            (
                "video and srtp refused with port 0",
                VIDEO_OFFER,
                Expect {
                    lines: vec![("video", 0), ("audio", 0), ("audio", 40_000)],
                    ..sendrecv(
                        G711::Pcmu,
                        0,
                        Some(101),
                        "198.51.100.10:40000",
                        "198.51.100.10:40001",
                    )
                },
            ),
            (
                "ipv6 with a=rtcp port only",
                IPV6_OFFER,
                sendrecv(
                    G711::Pcmu,
                    0,
                    Some(101),
                    "[2001:db8::10]:50000",
                    "[2001:db8::10]:50011",
                ),
            ),
        ];

        for (name, offer, expect) in cases {
            let (answer, negotiated) = accept(offer);
            assert_eq!(negotiated.codec, expect.codec, "{name}");
            assert_eq!(negotiated.payload_type, expect.payload_type, "{name}");
            assert_eq!(negotiated.telephone_event, expect.telephone_event, "{name}");
            assert_eq!(negotiated.remote_rtp, expect.remote_rtp, "{name}");
            assert_eq!(negotiated.remote_rtcp, expect.remote_rtcp, "{name}");
            assert_eq!(negotiated.ptime, ms(expect.ptime_ms), "{name}");
            assert_eq!(negotiated.direction, expect.direction, "{name}");
            assert_eq!(
                negotiated.remote_direction, expect.remote_direction,
                "{name}"
            );

            let answer = parse(&answer).expect("our answer parses");
            let offer = parse(offer.as_bytes()).expect("offer parses");
            let lines: Vec<(&str, u16)> = answer
                .media_descriptions
                .iter()
                .map(|media| {
                    let port = u16::try_from(media.media_name.port.value).expect("port");
                    (media.media_name.media.as_str(), port)
                })
                .collect();
            assert_eq!(lines, expect.lines, "{name}: m= lines");
            for (ours, theirs) in answer
                .media_descriptions
                .iter()
                .zip(&offer.media_descriptions)
            {
                assert_eq!(ours.media_name.protos, theirs.media_name.protos, "{name}");
                assert!(!ours.media_name.formats.is_empty(), "{name}: formats kept");
            }
            let audio = answer
                .media_descriptions
                .iter()
                .find(|media| media.media_name.port.value != 0)
                .expect("accepted audio");
            let mut formats = vec![expect.payload_type.to_string()];
            formats.extend(expect.telephone_event.map(|pt| pt.to_string()));
            assert_eq!(audio.media_name.formats, formats, "{name}");
            assert_eq!(
                audio.attribute("ptime"),
                Some(Some(expect.ptime_ms.to_string().as_str())),
                "{name}: ptime echoed"
            );
            assert!(
                audio.has_attribute(expect.direction.attribute()),
                "{name}: direction attribute"
            );
            let connection = answer.connection_information.as_ref().expect("c=");
            assert_eq!(
                connection.address.as_ref().map(|a| a.address.as_str()),
                Some("203.0.113.5")
            );
        }
    }

    #[test]
    fn answer_is_exact_for_asterisk_offer() {
        let mut negotiator = Negotiator::with_session_id(local(), 4242);
        let (answer, _) = negotiator
            .handle_offer(ASTERISK_OFFER.as_bytes())
            .expect("accepted");
        assert_eq!(
            std::str::from_utf8(&answer).expect("utf-8"),
            "v=0\r\n\
             o=- 4242 4242 IN IP4 203.0.113.5\r\n\
             s=voxgate\r\n\
             c=IN IP4 203.0.113.5\r\n\
             t=0 0\r\n\
             m=audio 40000 RTP/AVP 0 101\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-16\r\n\
             a=ptime:20\r\n\
             a=sendrecv\r\n"
        );
    }

    #[test]
    fn refuses_g729_only_offer_with_488() {
        let error = Negotiator::new(local())
            .handle_offer(G729_ONLY_OFFER.as_bytes())
            .expect_err("no common codec");
        assert_eq!(
            error,
            OfferError::NoCommonCodec {
                offered: vec!["G729/8000".to_owned(), "telephone-event/8000".to_owned()]
            }
        );
        assert_eq!(error.status(), 488);
    }

    #[test]
    fn refuses_offer_without_plain_audio() {
        let video_only = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\n\
                          t=0 0\r\nm=video 4000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";
        let error = Negotiator::new(local())
            .handle_offer(video_only.as_bytes())
            .expect_err("no audio");
        assert_eq!((error.clone(), error.status()), (OfferError::NoAudio, 488));
    }

    #[test]
    fn refuses_audio_with_fqdn_connection_address() {
        let fqdn = ASTERISK_OFFER.replace("c=IN IP4 192.168.1.10", "c=IN IP4 pbx.example.com");
        let error = Negotiator::new(local())
            .handle_offer(fqdn.as_bytes())
            .expect_err("fqdn");
        assert_eq!(
            error,
            OfferError::BadConnectionAddress {
                address: "pbx.example.com".to_owned()
            }
        );
    }

    #[test]
    fn rejects_garbage_and_truncated_bodies_without_panicking() {
        let mut bodies: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"\r\n".to_vec(),
            b"hello world".to_vec(),
            b"v=1\r\n".to_vec(),
            b"v=0\r\no=- x y IN IP4 1.2.3.4\r\n".to_vec(),
            b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n"
                .to_vec(),
            b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=audio 99999 RTP/AVP 0\r\n"
                .to_vec(),
            b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=audio 4000/x RTP/AVP 0\r\n"
                .to_vec(),
            b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nz=1 2 3\r\n".to_vec(),
            b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nr=1d\r\n".to_vec(),
            vec![0xff, 0xfe, b'v', b'=', 0x80],
            b"v=0\r\no=\xff\xff\r\n".to_vec(),
            vec![b'a'; MAX_SDP_LEN + 1],
        ];
        for offer in [ASTERISK_OFFER, VIDEO_OFFER, IPV6_OFFER, TELNYX_OFFER] {
            for cut in (0..offer.len()).step_by(7) {
                bodies.push(offer.as_bytes()[..cut].to_vec());
            }
        }
        let mut unparseable = 0;
        for body in &bodies {
            let mut negotiator = Negotiator::new(local());
            if let Err(error) = negotiator.handle_offer(body) {
                assert!(matches!(error.status(), 400 | 488), "{error}");
                assert!(negotiator.negotiated().is_none());
                unparseable += usize::from(error.status() == 400);
            }
            let mut offerer = Negotiator::new(local());
            offerer.create_offer();
            let _ = offerer.handle_answer(body);
        }
        assert!(unparseable >= 12, "garbage is refused as unparseable");
    }

    #[test]
    fn truncated_offer_missing_media_is_refused() {
        let cut = ASTERISK_OFFER
            .find("m=audio")
            .expect("offer has an audio line");
        let error = Negotiator::new(local())
            .handle_offer(&ASTERISK_OFFER.as_bytes()[..cut])
            .expect_err("no m= line");
        assert_eq!(error, OfferError::NoAudio);
    }

    #[test]
    fn unchanged_reoffer_keeps_version_and_body() {
        let mut negotiator = Negotiator::new(local());
        let (first, _) = negotiator
            .handle_offer(ASTERISK_OFFER.as_bytes())
            .expect("accepted");
        // A session-timer refresh re-INVITE usually bumps the offerer's version only.
        let refresh = ASTERISK_OFFER.replace("1718291425 1718291425", "1718291425 1718291426");
        let (second, _) = negotiator
            .handle_offer(refresh.as_bytes())
            .expect("accepted");
        assert_eq!(first, second);
    }

    #[test]
    fn hold_and_resume_bump_the_version_once_each() {
        let mut negotiator = Negotiator::new(local());
        let (initial, _) = negotiator
            .handle_offer(ASTERISK_OFFER.as_bytes())
            .expect("accepted");
        let (held, negotiated) = negotiator
            .handle_offer(SENDONLY_HOLD_OFFER.as_bytes())
            .expect("hold accepted");
        assert_eq!(negotiated.direction, Direction::RecvOnly);
        let (resumed, negotiated) = negotiator
            .handle_offer(ASTERISK_OFFER.as_bytes())
            .expect("resume accepted");
        assert_eq!(negotiated.direction, Direction::SendRecv);

        let version = |body: &Bytes| parse(body).expect("parses").origin.session_version;
        assert_eq!(version(&held), version(&initial) + 1);
        assert_eq!(version(&resumed), version(&held) + 1);
        assert!(parse(&held)
            .expect("parses")
            .media_descriptions
            .first()
            .expect("audio")
            .has_attribute("recvonly"));
    }

    #[test]
    fn zero_address_hold_resumes_with_sendrecv() {
        let mut negotiator = Negotiator::new(local());
        negotiator
            .handle_offer(ASTERISK_OFFER.as_bytes())
            .expect("accepted");
        let (_, held) = negotiator
            .handle_offer(ZERO_ADDRESS_HOLD_OFFER.as_bytes())
            .expect("hold");
        assert_eq!(
            (held.direction, held.remote_rtp),
            (Direction::RecvOnly, None)
        );
        let resume = ZERO_ADDRESS_HOLD_OFFER.replace("c=IN IP4 0.0.0.0", "c=IN IP4 203.0.113.20");
        let (_, resumed) = negotiator.handle_offer(resume.as_bytes()).expect("resume");
        assert_eq!(resumed.direction, Direction::SendRecv);
        assert_eq!(resumed.remote_rtp, addr("203.0.113.20:17766"));
    }

    #[test]
    fn refused_reoffer_keeps_the_old_session() {
        let mut negotiator = Negotiator::new(local());
        let (_, first) = negotiator
            .handle_offer(ASTERISK_OFFER.as_bytes())
            .expect("accepted");
        let error = negotiator
            .handle_offer(G729_ONLY_OFFER.as_bytes())
            .expect_err("488");
        assert_eq!(error.status(), 488);
        assert_eq!(negotiator.negotiated(), Some(&first));
    }

    #[test]
    fn reoffer_may_not_remove_media_lines() {
        let mut negotiator = Negotiator::new(local());
        negotiator
            .handle_offer(VIDEO_OFFER.as_bytes())
            .expect("accepted");
        let error = negotiator
            .handle_offer(ASTERISK_OFFER.as_bytes())
            .expect_err("fewer m= lines");
        assert_eq!(
            error,
            OfferError::MediaLinesRemoved {
                previous: 3,
                offered: 1
            }
        );
    }

    #[test]
    fn offers_pcmu_pcma_and_telephone_event() {
        let mut negotiator = Negotiator::with_session_id(local(), 77);
        let offer = negotiator.create_offer();
        assert_eq!(
            std::str::from_utf8(&offer).expect("utf-8"),
            "v=0\r\n\
             o=- 77 77 IN IP4 203.0.113.5\r\n\
             s=voxgate\r\n\
             c=IN IP4 203.0.113.5\r\n\
             t=0 0\r\n\
             m=audio 40000 RTP/AVP 0 8 101\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-16\r\n\
             a=ptime:20\r\n\
             a=sendrecv\r\n"
        );
        assert!(negotiator.is_offer_pending());
        assert_eq!(negotiator.create_offer(), offer, "repeat is identical");
    }

    #[test]
    fn an_offer_limited_to_the_callers_codec_lists_only_it() {
        let mut local = local();
        local.offer_codecs = vec![G711::Pcmu];
        let offer = Negotiator::with_session_id(local, 77).create_offer();
        let text = std::str::from_utf8(&offer).expect("utf-8");
        assert!(text.contains("m=audio 40000 RTP/AVP 0 101\r\n"), "{text}");
        assert!(!text.contains("PCMA"), "{text}");
    }

    #[test]
    fn answer_in_ack_completes_our_offer() {
        let mut negotiator = Negotiator::new(local());
        negotiator.create_offer();
        let answer = "v=0\r\no=- 3 3 IN IP4 192.0.2.50\r\ns=-\r\nc=IN IP4 192.0.2.50\r\nt=0 0\r\n\
                      m=audio 6000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n\
                      a=rtpmap:101 telephone-event/8000\r\na=ptime:30\r\na=sendrecv\r\n";
        let negotiated = negotiator
            .handle_answer(answer.as_bytes())
            .expect("answer accepted");
        assert_eq!(
            negotiated,
            Negotiated {
                codec: G711::Pcma,
                payload_type: 8,
                telephone_event: Some(101),
                remote_rtp: addr("192.0.2.50:6000"),
                remote_rtcp: addr("192.0.2.50:6001"),
                ptime: ms(30),
                direction: Direction::SendRecv,
                remote_direction: Direction::SendRecv,
            }
        );
        assert!(!negotiator.is_offer_pending());
        assert_eq!(negotiator.negotiated(), Some(&negotiated));
    }

    #[test]
    fn answer_with_codec_we_did_not_offer_is_refused() {
        let mut negotiator = Negotiator::new(local());
        negotiator.create_offer();
        let answer = "v=0\r\no=- 3 3 IN IP4 192.0.2.50\r\ns=-\r\nc=IN IP4 192.0.2.50\r\nt=0 0\r\n\
                      m=audio 6000 RTP/AVP 96\r\na=rtpmap:96 PCMU/8000\r\n";
        let error = negotiator
            .handle_answer(answer.as_bytes())
            .expect_err("pt 96 was not offered");
        assert!(matches!(error, OfferError::NoCommonCodec { .. }), "{error}");
        assert_eq!(
            negotiator.handle_answer(answer.as_bytes()),
            Err(OfferError::NoOfferPending)
        );
    }

    #[test]
    fn answer_with_wrong_media_count_is_refused() {
        let mut negotiator = Negotiator::new(local());
        negotiator.create_offer();
        let error = negotiator
            .handle_answer(VIDEO_OFFER.as_bytes())
            .expect_err("3 m= lines for 1");
        assert_eq!(
            error,
            OfferError::MediaCountMismatch {
                offered: 1,
                answered: 3
            }
        );
    }

    #[test]
    fn offer_during_our_offer_is_glare() {
        let mut negotiator = Negotiator::new(local());
        negotiator.create_offer();
        let error = negotiator
            .handle_offer(ASTERISK_OFFER.as_bytes())
            .expect_err("glare");
        assert_eq!((error.clone(), error.status()), (OfferError::Glare, 491));
        assert_eq!(
            Negotiator::new(local()).handle_answer(ASTERISK_OFFER.as_bytes()),
            Err(OfferError::NoOfferPending)
        );
    }

    #[test]
    fn withdrawn_offer_leaves_the_session_in_force_and_takes_offers_again() {
        let mut negotiator = Negotiator::new(local());
        let (answer, first) = negotiator
            .handle_offer(ASTERISK_OFFER.as_bytes())
            .expect("accepted");
        negotiator.create_offer();
        assert!(negotiator.is_offer_pending());
        negotiator.withdraw_offer();
        assert!(!negotiator.is_offer_pending());
        assert_eq!(negotiator.negotiated(), Some(&first));
        let (again, _) = negotiator
            .handle_offer(ASTERISK_OFFER.as_bytes())
            .expect("no glare after the withdrawal");
        assert_eq!(again, answer, "same session, same body and version");
        // Before any session, a withdrawn offer leaves nothing negotiated.
        let mut fresh = Negotiator::new(local());
        fresh.create_offer();
        fresh.withdraw_offer();
        assert_eq!(fresh.negotiated(), None);
        assert!(!fresh.is_offer_pending());
    }

    #[test]
    fn our_hold_reoffer_is_sendonly_and_refresh_is_identical() {
        let mut negotiator = Negotiator::new(local());
        let (answer, _) = negotiator
            .handle_offer(FREESWITCH_OFFER.as_bytes())
            .expect("accepted");
        let refresh = negotiator.create_offer();
        assert_eq!(
            refresh, answer,
            "session refresh re-offer repeats our last body"
        );
        let their_answer = FREESWITCH_OFFER.replace("8 0 101 13", "0 101");
        negotiator
            .handle_answer(their_answer.as_bytes())
            .expect("refresh answered");

        negotiator.set_hold(true);
        let hold = negotiator.create_offer();
        let hold_sdp = parse(&hold).expect("parses");
        let audio = hold_sdp.media_descriptions.first().expect("audio");
        assert!(audio.has_attribute("sendonly"));
        assert_eq!(
            hold_sdp.origin.session_version,
            parse(&answer).expect("parses").origin.session_version + 1
        );
        let held_answer = their_answer.replace("a=sendrecv", "a=recvonly");
        let negotiated = negotiator
            .handle_answer(held_answer.as_bytes())
            .expect("hold answered");
        assert_eq!(negotiated.direction, Direction::SendOnly);
    }

    #[test]
    fn ipv6_local_address_is_advertised_as_ip6() {
        let local = LocalMedia::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 40_000);
        let (answer, _) = Negotiator::new(local)
            .handle_offer(IPV6_OFFER.as_bytes())
            .expect("accepted");
        let answer = parse(&answer).expect("parses");
        assert_eq!(answer.origin.address_type, "IP6");
        let connection = answer.connection_information.expect("c=");
        assert_eq!(connection.address_type, "IP6");
        assert_eq!(connection.address.expect("address").address, "::1");
    }

    #[test]
    fn out_of_range_ptime_falls_back_to_default() {
        let odd = PTIME_30_OFFER.replace("a=ptime:30", "a=ptime:5000");
        let (_, negotiated) = accept(&odd);
        assert_eq!(negotiated.ptime, DEFAULT_PTIME);
        let decimal = PTIME_30_OFFER.replace("a=ptime:30", "a=ptime:30.00");
        assert_eq!(accept(&decimal).1.ptime, ms(30));
    }

    #[test]
    fn lf_only_line_endings_are_accepted() {
        let lf = ASTERISK_OFFER.replace("\r\n", "\n");
        assert_eq!(accept(&lf).1.remote_rtp, addr("192.168.1.10:10000"));
    }

    fn ms(millis: u64) -> Duration {
        crate::testkit::ms(millis)
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut negotiator = Negotiator::new(local());
            let _ = negotiator.handle_offer(&body);
            negotiator.create_offer();
            let _ = negotiator.handle_answer(&body);
        }

        #[test]
        fn mutated_offers_never_panic(
            which in 0usize..4,
            edits in proptest::collection::vec((0usize..2_000, proptest::num::u8::ANY), 1..8),
        ) {
            let offer = [ASTERISK_OFFER, TELNYX_OFFER, VIDEO_OFFER, IPV6_OFFER][which];
            let mut body = offer.as_bytes().to_vec();
            for (position, byte) in edits {
                let len = body.len();
                if let Some(slot) = body.get_mut(position % len) {
                    *slot = byte;
                }
            }
            if let Ok((answer, _)) = Negotiator::new(local()).handle_offer(&body) {
                proptest::prop_assert!(parse(&answer).is_ok(), "our answer always re-parses");
            }
        }
    }
}
