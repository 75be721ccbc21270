"""The console's words in its three languages, and the locale formatting of numbers and
dates (Babel). A person reads the console in their own language (`rrmm people create
--language`); before sign-in, the browser's Accept-Language decides."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from babel import Locale
from babel.dates import format_datetime
from babel.numbers import format_decimal

from app.people.service import LANGUAGES

WORDS: dict[str, dict[str, str]] = {
    "en": {
        "console": "RRMM console",
        "sign_out": "Sign out",
        "sign_out_everywhere": "Sign out everywhere",
        "sign_in": "Sign in",
        "email": "Email",
        "password": "Password",
        "code_or_recovery": "Code from your authenticator app (or a recovery code)",
        "refused": "Email, password or code not recognised.",
        "locked": "Too many failed attempts for this account: try again in a while.",
        "too_many": "Too many attempts: try later.",
        "form_expired": "Form expired",
        "form_expired_text": "This form has expired. Go back, reload the page and try again.",
        "link_invalid": "Link not valid",
        "link_invalid_text": "This set-up link is not valid or has expired. Ask an "
        "administrator for a new one.",
        "set_up": "Set up your account",
        "welcome": "Welcome, {name}",
        "set_up_text": "Choose a password and connect an authenticator app to finish setting "
        "up your account ({email}, {role}).",
        "new_password": "Password (at least {minimum} characters)",
        "confirmation": "The same password again",
        "scan": "Scan with an authenticator app, or type the key",
        "six_digits": "The 6-digit code the app shows",
        "optional_here": "(optional here)",
        "finish": "Finish setting up",
        "ready": "Your account is ready",
        "recovery_codes": "Your recovery codes",
        "recovery_text": "Keep these recovery codes somewhere safe. Each signs you in once if "
        "you lose your authenticator app. They are shown only now.",
        "incidents": "Incidents",
        "reference": "Reference",
        "title": "Title",
        "state": "State",
        "severity": "Severity",
        "mode": "Mode",
        "members": "Members",
        "declared": "Declared",
        "no_incidents": "No incident has been declared yet.",
        "admin": "admin",
        "operator": "operator",
        "viewer": "viewer",
        "pending_approval": "waiting for a second person",
        "mobilizing": "mobilizing",
        "active": "active",
        "resolved": "resolved",
        "cancelled": "cancelled",
        "rejected": "rejected",
        "expired": "expired",
        "actual": "actual",
        "exercise": "exercise",
        "approvals": "Approvals",
        "nothing_waiting": "Nothing waits for approval.",
        "approve": "Approve and send",
        "reject": "Reject",
        "reason": "Why (kept in the timeline and the audit trail)",
        "reason_required": "A reason is required.",
        "declared_by_you": "You declared it: a second person must approve it.",
        "expires": "Expires",
        "urgency": "Urgency",
        "approved_note": "Approved: the briefing is going out.",
        "rejected_note": "Rejected: nothing will be sent.",
        "not_allowed": "Not allowed",
        "not_allowed_text": "Your role does not allow this page.",
        "not_pending": "This declaration no longer waits for approval.",
    },
    "fr": {
        "console": "Console RRMM",
        "sign_out": "Se déconnecter",
        "sign_out_everywhere": "Se déconnecter partout",
        "sign_in": "Se connecter",
        "email": "Adresse e-mail",
        "password": "Mot de passe",
        "code_or_recovery": "Code de votre application d'authentification (ou un code de secours)",
        "refused": "Adresse, mot de passe ou code non reconnus.",
        "locked": "Trop d'échecs pour ce compte : réessayez dans un moment.",
        "too_many": "Trop de tentatives : réessayez plus tard.",
        "form_expired": "Formulaire expiré",
        "form_expired_text": "Ce formulaire a expiré. Revenez en arrière, rechargez la page et "
        "réessayez.",
        "link_invalid": "Lien non valide",
        "link_invalid_text": "Ce lien de configuration n'est pas valide ou a expiré. Demandez-en "
        "un nouveau à un administrateur.",
        "set_up": "Configurer votre compte",
        "welcome": "Bienvenue, {name}",
        "set_up_text": "Choisissez un mot de passe et associez une application "
        "d'authentification pour terminer la configuration de votre compte ({email}, {role}).",
        "new_password": "Mot de passe (au moins {minimum} caractères)",
        "confirmation": "Le même mot de passe à nouveau",
        "scan": "Scannez avec une application d'authentification, ou saisissez la clé",
        "six_digits": "Le code à 6 chiffres affiché par l'application",
        "optional_here": "(facultatif ici)",
        "finish": "Terminer la configuration",
        "ready": "Votre compte est prêt",
        "recovery_codes": "Vos codes de secours",
        "recovery_text": "Conservez ces codes de secours en lieu sûr. Chacun vous connecte une "
        "fois si vous perdez votre application d'authentification. Ils ne sont affichés "
        "qu'une fois.",
        "incidents": "Incidents",
        "reference": "Référence",
        "title": "Titre",
        "state": "État",
        "severity": "Gravité",
        "mode": "Mode",
        "members": "Membres",
        "declared": "Déclaré",
        "no_incidents": "Aucun incident n'a encore été déclaré.",
        "admin": "administrateur",
        "operator": "opérateur",
        "viewer": "observateur",
        "pending_approval": "en attente d'une seconde personne",
        "mobilizing": "mobilisation",
        "active": "actif",
        "resolved": "terminé",
        "cancelled": "annulé",
        "rejected": "rejeté",
        "expired": "expiré",
        "actual": "réel",
        "exercise": "exercice",
        "approvals": "Approbations",
        "nothing_waiting": "Rien n'attend d'approbation.",
        "approve": "Approuver et envoyer",
        "reject": "Rejeter",
        "reason": "Pourquoi (conservé dans la chronologie et le journal d'audit)",
        "reason_required": "Une raison est requise.",
        "declared_by_you": "Vous l'avez déclaré : une seconde personne doit l'approuver.",
        "expires": "Expire",
        "urgency": "Urgence",
        "approved_note": "Approuvé : le briefing part.",
        "rejected_note": "Rejeté : rien ne sera envoyé.",
        "not_allowed": "Non autorisé",
        "not_allowed_text": "Votre rôle ne permet pas d'ouvrir cette page.",
        "not_pending": "Cette déclaration n'attend plus d'approbation.",
    },
    "ar": {
        "console": "وحدة تحكم RRMM",
        "sign_out": "تسجيل الخروج",
        "sign_out_everywhere": "تسجيل الخروج من كل الأجهزة",
        "sign_in": "تسجيل الدخول",
        "email": "البريد الإلكتروني",
        "password": "كلمة المرور",
        "code_or_recovery": "الرمز من تطبيق المصادقة (أو رمز استرداد)",
        "refused": "البريد الإلكتروني أو كلمة المرور أو الرمز غير صحيح.",
        "locked": "محاولات فاشلة كثيرة لهذا الحساب: حاول مرة أخرى بعد قليل.",
        "too_many": "محاولات كثيرة جداً: حاول لاحقاً.",
        "form_expired": "انتهت صلاحية النموذج",
        "form_expired_text": "انتهت صلاحية هذا النموذج. ارجع وأعد تحميل الصفحة ثم حاول مجدداً.",
        "link_invalid": "الرابط غير صالح",
        "link_invalid_text": "رابط الإعداد هذا غير صالح أو انتهت صلاحيته. اطلب رابطاً جديداً من "
        "أحد المسؤولين.",
        "set_up": "إعداد حسابك",
        "welcome": "مرحباً، {name}",
        "set_up_text": "اختر كلمة مرور واربط تطبيق مصادقة لإكمال إعداد حسابك ({email}، {role}).",
        "new_password": "كلمة المرور ({minimum} حرفاً على الأقل)",
        "confirmation": "كلمة المرور نفسها مرة أخرى",
        "scan": "امسح الرمز بتطبيق مصادقة، أو اكتب المفتاح",
        "six_digits": "الرمز المكوّن من 6 أرقام الذي يعرضه التطبيق",
        "optional_here": "(اختياري هنا)",
        "finish": "إكمال الإعداد",
        "ready": "حسابك جاهز",
        "recovery_codes": "رموز الاسترداد",
        "recovery_text": "احتفظ برموز الاسترداد هذه في مكان آمن. كل رمز يتيح لك الدخول مرة واحدة "
        "إذا فقدت تطبيق المصادقة. لن تُعرض إلا الآن.",
        "incidents": "الحوادث",
        "reference": "المرجع",
        "title": "العنوان",
        "state": "الحالة",
        "severity": "الخطورة",
        "mode": "النوع",
        "members": "الأعضاء",
        "declared": "تاريخ الإعلان",
        "no_incidents": "لم يُعلن عن أي حادث بعد.",
        "admin": "مسؤول",
        "operator": "مشغّل",
        "viewer": "مراقب",
        "pending_approval": "بانتظار موافقة شخص ثانٍ",
        "mobilizing": "قيد التعبئة",
        "active": "نشط",
        "resolved": "منتهٍ",
        "cancelled": "ملغى",
        "rejected": "مرفوض",
        "expired": "منتهي الصلاحية",
        "actual": "حقيقي",
        "exercise": "تمرين",
        "approvals": "الموافقات",
        "nothing_waiting": "لا شيء بانتظار الموافقة.",
        "approve": "موافقة وإرسال",
        "reject": "رفض",
        "reason": "السبب (يُحفظ في السجل الزمني وسجل التدقيق)",
        "reason_required": "السبب مطلوب.",
        "declared_by_you": "أنت من أعلنه: يجب أن يوافق عليه شخص ثانٍ.",
        "expires": "ينتهي",
        "urgency": "الاستعجال",
        "approved_note": "تمت الموافقة: الإحاطة قيد الإرسال.",
        "rejected_note": "تم الرفض: لن يُرسل شيء.",
        "not_allowed": "غير مسموح",
        "not_allowed_text": "دورك لا يسمح بفتح هذه الصفحة.",
        "not_pending": "لم يعد هذا الإعلان بانتظار الموافقة.",
    },
}

# The reasons the people service gives, as the console shows them next to their field.
REASONS: dict[str, dict[str, str]] = {
    "fr": {
        "at least 12 characters": "au moins 12 caractères",
        "at most 200 characters": "au plus 200 caractères",
        "must not be your email address": "ne doit pas être votre adresse e-mail",
        "does not match the password": "ne correspond pas au mot de passe",
        "not the code your authenticator app shows now": "ce n'est pas le code affiché "
        "maintenant par votre application",
        "required: scan the QR code and type the code it shows": "obligatoire : scannez le "
        "code QR et saisissez le code affiché",
    },
    "ar": {
        "at least 12 characters": "12 حرفاً على الأقل",
        "at most 200 characters": "200 حرف على الأكثر",
        "must not be your email address": "يجب ألا تكون بريدك الإلكتروني",
        "does not match the password": "لا تطابق كلمة المرور",
        "not the code your authenticator app shows now": "ليس الرمز الذي يعرضه تطبيق المصادقة الآن",
        "required: scan the QR code and type the code it shows": "مطلوب: امسح رمز QR واكتب "
        "الرمز الذي يظهر",
    },
}


def language_of(accept_language: str | None) -> str:
    """The console language for a visitor not signed in: the first of the browser's
    languages we have, else English."""
    weighted: list[tuple[float, str]] = []
    for part in (accept_language or "").split(",")[:20]:
        tag, _, quality = part.strip().partition(";q=")
        try:
            weight = float(quality) if quality else 1.0
        except ValueError:
            continue
        primary = tag.split("-")[0].strip().lower()
        if primary in LANGUAGES:
            weighted.append((weight, primary))
    return max(weighted, key=lambda w: w[0])[1] if weighted else "en"


def context(language: str) -> dict[str, Any]:
    """What every console template reads: the words, the language, its direction, and
    the locale's number and date formats."""
    language = language if language in LANGUAGES else "en"
    locale = Locale.parse(language)

    def number(value: int) -> str:
        return str(format_decimal(value, locale=locale))

    def moment(value: datetime) -> str:
        return str(format_datetime(value, format="short", tzinfo=None, locale=locale))

    def reason(text: str) -> str:
        return REASONS.get(language, {}).get(text, text)

    return {
        "language": language,
        "direction": str(locale.text_direction),
        "w": WORDS[language],
        "number": number,
        "moment": moment,
        "reason": reason,
    }
