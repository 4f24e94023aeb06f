from django import forms
from django.contrib.auth import get_user_model


class StartCallForm(forms.Form):
    callee = forms.CharField(max_length=150, label="Username to call")

    def __init__(self, *args, caller=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.caller = caller

    def clean_callee(self):
        name = self.cleaned_data["callee"].strip()
        user = get_user_model().objects.filter(username__iexact=name, is_active=True).first()
        if user is None:
            raise forms.ValidationError(f"There is no one called {name!r} here.")
        if self.caller is not None and user.pk == self.caller.pk:
            raise forms.ValidationError("You can't call yourself.")
        return user
