"""Language codes: ISO 639-1, validated early so a typo fails before any data is read or any worker starts;
the packaged XQuAD-R's languages and the paper's training languages."""

XQUAD_R_LANGUAGES = ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh")
PAPER_TRAIN_LANGUAGES = ("ar", "de", "en", "es", "hi", "ru", "th", "tr", "zh")  # el, vi stay unseen
HIGH_RESOURCE = ("en", "de", "es", "zh", "ar", "ru")  # the report's high-resource group (its question 2)

ISO_639_1 = frozenset(
    """
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz ee
el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is it
iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my
na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn
so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
""".split()
)


def check_language_code(lang: str) -> str:
    """Return `lang` if it is a lowercase ISO 639-1 code, else raise a ValueError that says so."""
    if lang not in ISO_639_1:
        raise ValueError(
            f"unknown language code {lang!r}: use a lowercase ISO 639-1 code such as "
            "'en', 'de', 'zh' (XQuAD-R has ar de el en es hi ru th tr vi zh)."
        )
    return lang
