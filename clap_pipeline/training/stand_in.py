"""Offline stand-ins for ``laion/clap-htsat-unfused``: the tiny CLAP, or the real size.

``save_stand_in(out_dir, size="full")`` saves a ``ClapModel(ClapConfig())`` (the
hub model's exact architecture: HTSAT-tiny audio tower, RoBERTa-base text tower,
512-d projections; 153.5 M parameters) with random weights, and a processor whose
tokenizer yields realistic token counts: a RoBERTa-style byte-level BPE (cased, no
prefix space, ``<s> … </s>`` framing, the same special-token ids) trained here on a
generated English + music corpus. Common words are one token each as in RoBERTa's
vocabulary, rarer words split into pieces. Every speed figure of the text tower can
then be taken at the real size without the hub. ``size="tiny"`` is
``model.save_tiny_model``.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import ClapConfig, ClapModel, ClapProcessor, PreTrainedTokenizerFast

from clap_pipeline.model.clap import unfused_feature_extractor
from clap_pipeline.model.tiny import TINY_TOKENIZER_WORDS, roberta_framed, save_tiny_model
from clap_pipeline.storage import atomic_path

SIZES = ("tiny", "full")
ROBERTA_VOCAB_SIZE = 50_265  # ClapConfig().text_config.vocab_size, as the hub tokenizer's

# Frequent English words (function words, common verbs/adjectives/nouns) and the words
# people use for music: what queries and FMA prompts are made of.
_ENGLISH = """
the of and to a in is it you that he was for on are with as I his they be at one have this
from or had by hot word but what some we can out other were all there when up use your how
said an each she which do their time if will way about many then them write would like so
these her long make thing see him two has look more day could go come did number sound no
most people my over know water than call first who may down side been now find any new work
part take get place made live where after back little only round man year came show every
good me give our under name very through just form sentence great think say help low line
differ turn cause much mean before move right boy old too same tell does set three want air
well also play small end put home read hand port large spell add even land here must big
high such follow act why ask men change went light kind off need house picture try us again
animal point mother world near build self earth father head stand own page should country
found answer school grow study still learn plant cover food sun four between state keep eye
never last let thought city tree cross farm hard start might story saw far sea draw left late
run while press close night real life few north open seem together next white children begin
got walk example ease paper group always music those both mark often letter until mile river
car feet care second book carry took science eat room friend began idea fish mountain stop
once base hear horse cut sure watch color face wood main enough plain girl usual young ready
above ever red list though feel talk bird soon body dog family direct pose leave song measure
door product black short numeral class wind question happen complete ship area half rock
order fire south problem piece told knew pass since top whole king space heard best hour
better true during hundred five remember step early hold west ground interest reach fast verb
sing listen six table travel less morning ten simple several vowel toward war lay against
pattern slow center love person money serve appear road map rain rule govern pull cold notice
voice unit power town fine certain fly fall lead cry dark machine note wait plan figure star
box noun field rest correct able pound done beauty drive stood contain front teach week final
gave green oh quick develop ocean warm free minute strong special mind behind clear tail
produce fact street inch multiply nothing course stay wheel full force blue object decide
surface deep moon island foot system busy test record boat common gold possible plane
instead dry wonder laugh thousand ago ran check game shape equate miss brought heat snow tire
bring yes distant fill east paint language among soft loud quiet gentle heavy bright calm
sad happy angry dreamy lonely peaceful smooth rough sweet bitter rich thin thick wide narrow
golden silver silent broken velvet hollow neon glass mirror mirrors garden harbor harbour
midnight morning evening summer winter spring autumn storm thunder shadow shadows ghost
ghosts wolf wolves tiger tigers owl owls pilot pilots lantern lanterns satellite satellites
machine machines heart hearts fire stone stones gardens roads bridge tower castle forest
desert valley ocean waves wave sky skies stars sunset sunrise memory memories echoes lights
dream dreams paradise heaven angel angels devil blood bones rose roses queen prince child
kids baby lady lord king kings sam ana kurt nicky john paul mary david anna maria peter
james robert michael sarah laura tom mark luke alex max leo nina eva ella lily jack
new york london paris berlin tokyo los angeles san francisco chicago portland brooklyn
united states international attribution noncommercial sharealike noderivatives commons
creative license public domain universal version
"""
_MUSIC = """
acoustic electric guitar piano drums drum synth synthesizer bass vocal vocals voice choir
strings violin cello viola harp flute saxophone sax trumpet trombone horn clarinet organ
accordion banjo mandolin ukulele harmonica percussion tambourine bells chimes pad lead arp
beat beats groove rhythm melody harmony chord chords riff solo loop sample samples break
tempo bpm reverb delay distortion fuzz echo chorus phaser filter lo-fi hi-fi tape vinyl
crackle hiss noise drone ambient atmospheric cinematic epic minimal dense sparse layered
mellow chill relaxing energetic upbeat downbeat driving hypnotic haunting melancholic
nostalgic uplifting aggressive raw polished warm cold dark bright lush gritty dusty hazy
female male singer songwriter band orchestra ensemble quartet trio duo live studio demo
instrumental remix edit version mix album track single EP radio session recording
rock jazz folk pop blues soul funk disco house techno trance dubstep dub reggae ska punk
metal hardcore grunge indie alternative emo shoegaze psychedelic psych garage surf country
bluegrass americana gospel classical baroque opera chamber orchestral soundtrack score
electronic electronica experimental avant-garde noise industrial glitch idm chiptune 8-bit
hip-hop rap trap boom bap lounge easy listening swing bebop fusion latin salsa bossa nova
samba tango flamenco afrobeat world international spoken word poetry comedy historic
old-time dance club ambient downtempo trip-hop post-rock math-rock lo-fi beat tape bedroom
Rock Jazz Folk Pop Blues Soul-RnB Electronic Experimental Hip-Hop Classical Country Spoken
International Instrumental Easy Listening Old-Time Historic Genre Tags Music Track Album
by called from the album tagged genre
"""
_TEMPLATES = (
    "{a} {g} track called {w}",
    "{g} music by {w}",
    "music tagged {g}, {a}",
    "{a} {b} {g} with {i}",
    "{a} {i} and {b} {i}",
    "a {a} {g} song with {i} and {w}",
    "{w} {w} {w} {w} {w}",
    "{w} {w}, {w} {w}.",
    '"{T} {T}" by {T} {T}. Genre: {T}. Tags: {w}, {w}.',
    "{T} {T} - {T} {T} ({T} {T})",
    'An {T} track called "{T} {T}" by {T} {T}, from the album "{T}".',
)


def _corpus(lines: int = 60_000, seed: int = 0) -> list[str]:
    """Prompt-like sentences over common English and music words (deterministic)."""
    english, music = _ENGLISH.split(), _MUSIC.split()
    instruments = music[:40]
    words = english + music + TINY_TOKENIZER_WORDS
    titles = [w[:1].upper() + w[1:] for w in words]
    rng = random.Random(seed)
    out = []
    for template in itertools.islice(itertools.cycle(_TEMPLATES), lines):
        out.append(
            template.format_map(
                _Picker(
                    rng,
                    {"a": music, "b": music, "g": music, "i": instruments, "w": words, "T": titles},
                )
            )
        )
    # Capitalised sentence starts, as in prompts and typed queries.
    return out + [s[:1].upper() + s[1:] for s in out[::3]]


class _Picker(dict):
    def __init__(self, rng: random.Random, pools: dict[str, list[str]]) -> None:
        super().__init__()
        self.rng, self.pools = rng, pools

    def __missing__(self, key: str) -> str:
        return self.rng.choice(self.pools[key])


def roberta_like_tokenizer(vocab_size: int = ROBERTA_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A byte-level BPE with RoBERTa's conventions, trained offline on ``_corpus()``.

    Cased, no prefix space (RoBERTa's defaults), ids 0-4 for ``<s> <pad> </s> <unk>
    <mask>`` as in ``roberta-base``. The corpus has fewer distinct words than RoBERTa's
    50,265-entry vocabulary: the trained vocabulary is smaller, every id stays below the
    model's ``vocab_size``, and the embedding matrix keeps the real size.
    """
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(
        _corpus(),
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    return roberta_framed(bpe)


def full_size_config() -> ClapConfig:
    """``laion/clap-htsat-unfused``'s architecture: ``ClapConfig()`` with its defaults."""
    return ClapConfig()


def save_full_size_model(out_dir: str | Path, seed: int = 0) -> Path:
    """The full-size CLAP (random weights) with an offline processor, as a model folder."""
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        tokenizer = roberta_like_tokenizer()
        config = full_size_config()
        if len(tokenizer) > config.text_config.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens, the model takes fewer")
        ClapModel(config).save_pretrained(tmp, safe_serialization=True)
        processor = ClapProcessor(
            feature_extractor=unfused_feature_extractor(), tokenizer=tokenizer
        )
        processor.save_pretrained(tmp)
    return out_dir


def save_stand_in(out_dir: str | Path, size: str = "full", seed: int = 0) -> Path:
    """``size`` "tiny" (``save_tiny_model``) or "full" (``save_full_size_model``)."""
    if size == "tiny":
        return save_tiny_model(out_dir, seed=seed)
    if size == "full":
        return save_full_size_model(out_dir, seed=seed)
    raise ValueError(f"--size {size!r}: expected one of {', '.join(SIZES)}")
