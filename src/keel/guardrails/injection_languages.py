"""The injection heuristics' attack families phrased in other languages.

The detector's embedding model (all-MiniLM-L6-v2) reads English: a Chinese or Russian "ignore
your previous instructions" lands near ordinary non-English text and scores low. Its
heuristics carry over between languages when they are written in them, so each family that
has an unmistakable phrasing gets one here, as alternatives added to the English pattern of
the same name (so the trained model's weight for that heuristic applies unchanged).

Written from the languages' ordinary phrasing of these requests (Spanish, Portuguese, French,
German, Italian, Dutch, Polish, Russian, Ukrainian, Turkish, Arabic, Persian, Hindi, Chinese,
Japanese, Korean), not fitted to a corpus: the garak-multilingual payloads stay a held-out
test (``benchmarks/guards.py --parts loco``). Each phrase needs both halves of the attack (a
verb of ignoring and the instructions it targets; a verb of revealing and the system prompt;
"from now on" and "you"), so ordinary questions in those languages do not match; a test keeps
a set of them clean.
"""

from __future__ import annotations

__all__ = ["EXTRA"]

# Gaps between the two halves of a phrase: up to 40 characters of the same sentence.
_GAP = r"[^.!?\n。！？]{0,40}?"
_CJK_GAP = r"[^。！？\n]{0,12}?"

_IGNORE = "|".join(
    [
        # Spanish, Portuguese
        r"\b(?:ignora|ignore|ignorar|olvida|olvide|olvidar|descarta|omite|esqueça|esqueca"
        r"|desconsidere|desconsidera)\b" + _GAP + r"\b(?:instrucciones|instrucción|reglas"
        r"|indicaciones|órdenes|directrices|instruções|instrucoes|regras|orientações)\b",
        r"\bhaz\s+caso\s+omiso\s+de\s+(?:las|tus|todas)\b",
        r"\b(?:olvida|ignora|olvide|ignore|esqueça|esqueca)\s+todo\s+(?:lo\s+)?(?:anterior"
        r"|que\s+te\s+(?:dije|dijeron|han\s+dicho)|o\s+que\s+(?:te\s+)?(?:disse|disseram))\b",
        # French
        r"\b(?:ignore[rz]?|oublie[rz]?|néglige[rz]?)\b" + _GAP + r"\b(?:instructions|consignes"
        r"|règles|directives)\b",
        r"\boublie[rz]?\s+tout\s+(?:ce\s+qui\s+précède|ce\s+qu'on\s+t'a\s+dit)",
        # German, Dutch
        r"\b(?:ignorier\w*|vergiss|vergessen\s+sie|missachte\w*)\b" + _GAP + r"\b(?:anweisungen"
        r"|regeln|vorgaben|instruktionen|befehle|richtlinien)\b",
        r"\bvergiss\s+alles\b",
        r"\b(?:negeer|vergeet)\b" + _GAP + r"\b(?:instructies|regels|opdrachten)\b",
        # Italian, Polish
        r"\b(?:ignora|dimentica|trascura)\b" + _GAP + r"\b(?:istruzioni|regole|indicazioni)\b",
        r"\bdimentica\s+tutto\b",
        r"\b(?:zignoruj|ignoruj|zapomnij)\b" + _GAP + r"\b(?:instrukcj\w*|polece\w*|zasad\w*)\b",
        # Russian, Ukrainian
        r"(?:игнорируй\w*|проигнорируй\w*|забудь\w*|не\s+обращай\s+внимания|ігноруй\w*)"
        + _GAP
        + r"(?:инструкци\w*|правил\w*|указани\w*|команд\w*|інструкці\w*)",
        r"\bзабудь\s+(?:всё|все)\b",
        # Turkish: the object comes first ("önceki talimatları unut"), or the verb does
        r"\b(?:önceki|tüm|bütün|yukarıdaki|verilen)\s+(?:\w+\s+)?(?:talimat\w*|kural\w*"
        r"|yönerge\w*)" + _GAP + r"(?:unut|yok\s+say|görmezden\s+gel|dikkate\s+alma)",
        # Arabic, Persian, Hindi
        r"(?:تجاهل|انس|إنس)" + _GAP + r"(?:التعليمات|تعليمات|الأوامر|القواعد)",
        r"(?:دستورالعمل\w*|دستورات|قوانین|دستورها)" + _GAP + r"(?:نادیده\s*بگیر|فراموش\s*کن)",
        r"(?:نادیده\s*بگیر|فراموش\s*کن)" + _GAP + r"(?:دستورالعمل\w*|دستورات|قوانین)",
        r"(?:पिछले|सभी|पहले\s+के)\s+(?:सभी\s+)?(?:निर्देशों|निर्देश|नियमों)"
        + _GAP
        + r"(?:अनदेखा|भूल\s*जाओ|नज़रअंदाज़)",
        # Chinese (simplified and traditional), Japanese, Korean: "previous / all" is required,
        # so "can I ignore this warning?" stays ordinary
        r"(?:忽略|无视|無視|忘记|忘記|忘掉|不要理会|不要理會|忽视|忽視|抛开|拋開)掉?你?"
        r"(?:之前|以前|先前|上面|前面|以上|上述|所有|全部|一切)"
        + _CJK_GAP
        + r"(?:指令|指示|规则|規則|设定|設定|提示词|提示詞)",
        r"(?:以前の|前の|上記の|これまでの|すべての|全ての)(?:指示|命令|ルール|プロンプト)"
        + _CJK_GAP
        + r"(?:無視|忘れ)",
        r"(?:이전|모든|위의|앞의|기존)\s*(?:의\s*)?(?:지시|명령|규칙|지침|프롬프트)"
        + _CJK_GAP
        + r"(?:무시|잊어)",
    ]
)

# Only the unambiguous names of a system prompt: "system message" and "system instructions"
# are also what a product shows its users ("I got a system message").
_REVEAL_SYSTEM = "|".join(
    [
        r"\bprompt\s+(?:del|de|do|di)\s+sistema\b|\bprompt\s+syst[eè]me\b",
        r"\binstru(?:cciones|ções|coes|ctions|zioni)\s+(?:ocultas|secretas|iniciales|cachées"
        r"|secrètes|initiales|nascoste|iniziali|segretas|iniciais)\b",
        r"\bsystem-?prompts?\b|\b(?:versteckten|geheimen|ursprünglichen)\s+anweisungen\b",
        r"\bsysteemprompt\b",
        r"системн\w*\s+промпт\w*|промпт\w*\s+систем\w*",
        r"\bsistem\s+(?:istemi\w*|prompt\w*)",
        r"موجه\s+النظام|(?:پرامپت|پرامت)\s+سیستم",
        r"सिस्टम\s*प्रॉम्प्ट",
        r"系统提示词|系統提示詞|隐藏指令|隱藏指令|初始指令|系统提示语",
        r"システムプロンプト|隠された指示",
        r"시스템\s*프롬프트",
    ]
)

_ROLE_SWITCH = "|".join(
    [
        r"\ba\s+partir\s+de\s+(?:ahora|agora),?\s+(?:tú\s+|tu\s+|você\s+)?(?:eres|serás|vas\s+a"
        r"\s+ser|actúa|é|será|vai\s+ser)\b",
        r"\b(?:ahora|agora)\s+(?:eres|você\s+é)\s+(?:un|una|um|uma)\b",
        r"\b(?:finge|finja|fingi)\s+(?:que\s+eres|ser|que\s+é|di\s+essere)\b",
        r"\b(?:à\s+partir\s+de\s+maintenant|désormais),?\s+tu\s+(?:es|seras|vas\s+être|dois)\b",
        r"\btu\s+es\s+maintenant\b|\bfais\s+semblant\s+d'être\b",
        r"\b(?:ab\s+jetzt|von\s+nun\s+an)\s+(?:bist|wirst|sollst)\s+du\b",
        r"\bdu\s+bist\s+(?:jetzt|ab\s+sofort)\s+(?:ein|eine|mein|der|die|das)\b",
        r"\btu\s+so,?\s+als\s+(?:ob|wärst)\b",
        r"\bd'ora\s+in\s+poi,?\s+(?:sei|sarai)\b|\bora\s+sei\s+(?:un|una)\b",
        r"\bvanaf\s+nu\s+ben\s+je\b|\bod\s+teraz\s+jesteś\b",
        r"(?:отныне|с\s+этого\s+момента)\s+ты\b|\bпритворись\b|\bпредставь,?\s+что\s+ты\b",
        r"\bbundan\s+sonra\s+sen\b",
        r"من\s+الآن\s+(?:فصاعدا\s+|فصاعداً\s+)?(?:أنت|انت)",
        r"از\s+(?:این\s+به\s+بعد|حالا)\s+تو\s",
        r"从现在开始[，,]?\s*你是|從現在開始[，,]?\s*你是|你现在是一个|你現在是一個"
        r"|假装你是|假裝你是|扮演一个|扮演一個",
        r"今から(?:あなた|君|お前)は|(?:あなた|君)は今から",
        r"(?:지금부터|이제부터)\s*(?:너|당신)(?:는|은)",
    ]
)

_NO_RESTRICTIONS = "|".join(
    [
        r"\b(?:asistente|ia|modelo|bot|assistente|modèle|assistant|modell|assistent|ki)\s+(?:sin"
        r"|sem|sans|ohne|senza)\s+(?:restricciones|restrições|restricoes|restrictions"
        r"|einschränkungen|restrizioni|filtros|filtres|filter|filtri|censura|censure|zensur"
        r"|reglas|regras|règles|regeln|regole|límites|limites|grenzen|limiti)\b",
        r"(?:ассистент|модел|ии\b|бот)\w*\s+без\s+(?:ограничений|фильтров|цензуры|правил)",
        r"(?:不受任何|没有任何|沒有任何)(?:限制|过滤|過濾|审查|審查|规则|規則)的"
        r"(?:AI|ai|人工智能|助手|助理|模型|机器人|機器人)",
        r"\bkural\s+tanımayan\b|\bsansürsüz\b",
    ]
)
# Words without which a family's phrasing cannot match (lower case): the patterns run only on
# texts that hold one, so English text pays a few substring checks, not the alternations.
_IGNORE_ANCHORS = (
    "instru",
    "regla",
    "regra",
    "règle",
    "consigne",
    "directiv",
    "anweisung",
    "regeln",
    "vorgabe",
    "befehl",
    "richtlin",
    "regels",
    "opdracht",
    "regole",
    "indicaz",
    "indicac",
    "órdenes",
    "orientaç",
    "polece",
    "zasad",
    "инструкц",
    "інструкц",
    "правил",
    "указани",
    "команд",
    "talimat",
    "kural",
    "yönerge",
    "تعليمات",
    "الأوامر",
    "القواعد",
    "دستور",
    "قوانین",
    "निर्देश",
    "नियम",
    "指令",
    "指示",
    "规则",
    "規則",
    "设定",
    "設定",
    "提示词",
    "提示詞",
    "命令",
    "ルール",
    "プロンプト",
    "지시",
    "명령",
    "규칙",
    "지침",
    "프롬프트",
    "todo",
    "tout",
    "alles",
    "tutto",
    "всё",
    "все",
    "omiso",
)
_REVEAL_ANCHORS = (
    "prompt",
    "instru",
    "anweisung",
    "промпт",
    "istem",
    "موجه",
    "پرامپت",
    "پرامت",
    "प्रॉम्प्ट",
    "提示",
    "指令",
    "プロンプト",
    "指示",
    "프롬프트",
)
_ROLE_ANCHORS = (
    "partir",
    "ahora",
    "agora",
    "fing",
    "désormais",
    "maintenant",
    "semblant",
    "jetzt",
    "nun an",
    "sofort",
    "tu so",
    "d'ora",
    "ora sei",
    "vanaf nu",
    "teraz",
    "отныне",
    "момента",
    "притворись",
    "представь",
    "bundan sonra",
    "الآن",
    "این به بعد",
    "حالا",
    "现在",
    "現在",
    "假",
    "扮演",
    "今から",
    "지금부터",
    "이제부터",
)
_NO_RESTRICTION_ANCHORS = (
    "sin ",
    "sem ",
    "sans ",
    "ohne ",
    "senza ",
    "без ",
    "限制",
    "过滤",
    "過濾",
    "审查",
    "審查",
    "规则",
    "規則",
    "kural",
    "sansür",
)

#: Phrasings in other languages for the heuristics of the same name: the words one of which
#: a text must hold, and the pattern.
EXTRA: dict[str, tuple[tuple[str, ...], str]] = {
    "ignore_previous_instructions": (_IGNORE_ANCHORS, _IGNORE),
    "reveal_system_prompt": (_REVEAL_ANCHORS, _REVEAL_SYSTEM),
    "role_switch": (_ROLE_ANCHORS, _ROLE_SWITCH),
    "no_restrictions": (_NO_RESTRICTION_ANCHORS, _NO_RESTRICTIONS),
}
